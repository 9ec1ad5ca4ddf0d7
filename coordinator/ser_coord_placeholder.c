// placeholder: the coordinator library grows here (issue: distributed runtime).
typedef int ser__coord_placeholder;
