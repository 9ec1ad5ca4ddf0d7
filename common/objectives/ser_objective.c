// ser_objective.c — see ser_objective.h: the table of objectives.
#include "ser_objective.h"

#include <string.h>

#include "ser_barlow.h"
#include "ser_dino.h"
#include "ser_moco.h"

// The built-in objectives, in the order of SER_CONFIG_METHOD_* (the value of method.name).
// A new objective is one more row here.
static const ser_objective_i *s_table[SER_OBJECTIVE_MAX] = {
    &ser_objective_moco,
    &ser_objective_dino,
    &ser_objective_barlow,
    &ser_objective_essl,
    &ser_objective_augself,
    &ser_objective_equimod,
    &ser_objective_stl,
};
static int s_count;  // the rows above, counted before main()

// The names, in table order, filled from s_table before main() (the config's method.name
// list points here), so a new objective is its row above and nothing else in this file.
const char *ser_objective_names[SER_OBJECTIVE_MAX + 1];

__attribute__((constructor)) static void s_names(void) {
    while (s_count < SER_OBJECTIVE_MAX && s_table[s_count]) s_count++;
    for (int i = 0; i < s_count; i++) ser_objective_names[i] = s_table[i]->name;
    ser_objective_names[s_count] = NULL;
}

const ser_objective_i *ser_objective_get(int i) {
    return i >= 0 && i < s_count ? s_table[i] : NULL;
}

int ser_objective_find(const char *name) {
    for (int i = 0; i < s_count; i++)
        if (strcmp(s_table[i]->name, name) == 0) return i;
    return -1;
}

int ser_objective_count(void) { return s_count; }

int ser_objective_register(const ser_objective_i *o) {
    if (s_count >= SER_OBJECTIVE_MAX || !o || !o->name || ser_objective_find(o->name) >= 0)
        return -1;
    s_table[s_count] = o;
    ser_objective_names[s_count] = o->name;
    ser_objective_names[s_count + 1] = NULL;
    return s_count++;
}

void ser_objective_equiv_active(const ser_ptab *tab, int ser, int ser_grad, int n_eq, int pool,
                                unsigned char *active) {
    if (ser && ser_grad && n_eq > 0) return;
    for (int i = 0; i < tab->n; i++)
        if (strstr(tab->t[i].name, "projector_equiv.") ||
            (!pool && strstr(tab->t[i].name, "norm_equiv.")))
            active[i] = 0;
}

void ser_objective_model_fill(ser_objective_model *m, ser_ptab *tab, float *params, float *grads,
                              const ser_ptab *ttab, float *tparams, const ser_ptab *btab,
                              float *buffers, ser_vit *student, ser_vit *teacher, int ser,
                              int ser_grad) {
    memset(m, 0, sizeof *m);
    m->tab = tab, m->params = params, m->grads = grads;
    m->tabs[m->ntabs] = tab, m->arenas[m->ntabs++] = params;
    if (ttab) m->tabs[m->ntabs] = ttab, m->arenas[m->ntabs++] = tparams;
    if (btab) m->tabs[m->ntabs] = btab, m->arenas[m->ntabs++] = buffers;
    m->student = student, m->teacher = teacher, m->tparams = ttab ? tparams : NULL;
    m->ser = ser, m->ser_grad = ser_grad;
}
