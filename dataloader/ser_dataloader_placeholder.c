// placeholder: the data-loader library grows here (issue: data-loader service).
typedef int ser__dl_placeholder;
