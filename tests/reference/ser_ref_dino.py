"""PyTorch reference of ser's DINO + SER objective (aitrics-chris/SER, ser-reference.md §4.1).

Mirrors the public code for two global crops (no local crops):
  - DINOHead (vision_transformer.py:432-466, use_bn=False): Linear C->hidden, GELU,
    Linear hidden->hidden, GELU, Linear hidden->bottleneck, then F.normalize, then
    weight_norm(Linear(bottleneck->out_dim, bias=False)) with weight_g filled with 1 (trainable
    unless norm_last_layer);
  - MultiCropWrapper (builder/dino.py:212-292): backbone, head, projector_equiv, registered in
    that order; `erl` runs the head on cat[CLS inv0, CLS eq0, CLS inv1, CLS eq1];
  - set_projector_equiv (main_dino.py:223-229): the teacher shares the student's projector_equiv
    module (it is set after the teacher's parameters were frozen, so it stays trainable);
  - DINOLoss (main_dino.py:408-461) with ncrops = 2: student_out = s/student_temp,
    teacher_out = softmax((t - center)/teacher_temp), loss = 1/2 [CE(t0, s1) + CE(t1, s0)] with
    CE a batch mean of -sum t log_softmax(s), then the centre update (inside the loss forward,
    as there; one process, so the all_reduce is the identity);
  - the SER term: builder/dino.py:71-135 is a copy of MoCo's, here the same code as
    ser_ref.MoCoSER (teacher maps from the EMA teacher, through the shared projector), with
    `ser_grad` on (the paper) or off (the public code: value only);
  - the teacher EMA of main_dino.py:388-391 over zip(student.parameters(),
    teacher.parameters()). That zip pairs the shared projector_equiv with itself, and
    param_k.mul_(m).add_((1 - m) * param_q) then scales it by m(2 - m) (the in-place aliasing
    quirk). ema(m, projector_quirk=True) is that loop verbatim; projector_quirk=False skips the
    aliased pairs (ser's default: the projector is shared, not averaged).

Used by make_dino_fixtures.py (in float64).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ser_ref import ViT, ntxent, projector_equiv, rel_action


class DINOHead(nn.Module):
    def __init__(self, in_dim, out_dim, norm_last_layer=True, hidden_dim=2048, bottleneck_dim=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x):
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class DINOLoss(nn.Module):
    """DINOLoss of main_dino.py for 2 crops; the teacher temperature is passed per call (the
    reference looks it up in teacher_temp_schedule[epoch])."""

    def __init__(self, out_dim, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output, teacher_output, teacher_temp, ncrops=2):
        student_out = (student_output / self.student_temp).chunk(ncrops)
        teacher_out = F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)
        total_loss, n_loss_terms = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


class MultiCropWrapper(nn.Module):
    def __init__(self, backbone, head, proj):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.projector_equiv = proj

    def set_projector_equiv(self, proj):
        self.projector_equiv = proj


class DINOSER(nn.Module):
    """student / teacher MultiCropWrappers and the DINO loss; parameters are named
    student.backbone.*, student.head.mlp.*, student.head.last_layer.weight_{g,v},
    student.projector_equiv.*, teacher.backbone.*, teacher.head.* (the shared projector is
    listed once, under the student), and the buffer dino_loss.center."""

    def __init__(self, vit, out_dim, hidden_dim, bottleneck_dim, norm_last_layer, student_temp,
                 center_momentum, lam, tau, proj_dim, ser_grad):
        super().__init__()
        self.lam, self.tau, self.ser_grad = lam, tau, ser_grad
        C = vit["dim"]
        self.student = MultiCropWrapper(
            ViT(**vit), DINOHead(C, out_dim, norm_last_layer, hidden_dim, bottleneck_dim),
            projector_equiv(C, proj_dim))
        self.teacher = MultiCropWrapper(
            ViT(**vit), DINOHead(C, out_dim, True, hidden_dim, bottleneck_dim),
            projector_equiv(C, proj_dim))
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.teacher.set_projector_equiv(self.student.projector_equiv)
        self.dino_loss = DINOLoss(out_dim, student_temp, center_momentum)

    def _proj(self, fmap, g):
        rows, cols = (g[3], g[4]) if g[2] % 2 == 0 else (g[4], g[3])
        x = fmap.reshape(1, rows, cols, -1).permute(0, 3, 1, 2)
        return self.student.projector_equiv(x)  # (1, E, rows, cols)

    def forward(self, inv0, inv1, eq0, eq1, g0, g1, teacher_temp, local=()):
        """Returns (loss, loss_inv, loss_equiv, teacher head outputs (2B, out_dim)). local: the
        local crops (each (B, 3, s, s), by batch position), student only (main_dino.py's
        multi-crop: the teacher sees the two global views)."""
        inv, eq, gs = [inv0, inv1], [eq0, eq1], [g0, g1]
        qcls, kcls, qmaps, kmaps = [], [], [], []
        for v in range(2):  # view v rows: [inv_v; eq_v] (the reference's chunk v)
            rows = [self.student.backbone(inv[v])[0]]
            with torch.no_grad():
                krows = [self.teacher.backbone(inv[v])[0]]
            qm, km = [], []
            for x in eq[v]:
                c, fm, _ = self.student.backbone(x)
                rows.append(c)
                qm.append(fm)
                with torch.no_grad():
                    c, fm, _ = self.teacher.backbone(x)
                krows.append(c)
                km.append(fm)
            qcls.append(torch.cat(rows))
            kcls.append(torch.cat(krows))
            qmaps.append(qm)
            kmaps.append(km)
        lcls = [self.student.backbone(x)[0] for x in local]
        s = self.student.head(torch.cat(qcls + lcls))
        with torch.no_grad():
            t = self.teacher.head(torch.cat(kcls))
        loss_inv = self.dino_loss(s, t, teacher_temp, ncrops=2 + len(local))
        if len(eq0) == 0:  # no equivariant sample: no SER term in the graph
            return loss_inv, loss_inv, torch.zeros(()), t
        L = []
        for w in range(2):  # anchors: student view w; teacher view 1-w moved onto w's grid
            Q, K, tokens = [], [], []
            for e in range(len(eq0)):
                ga, gb = gs[1 - w][e], gs[w][e]
                pq = self._proj(qmaps[w][e], gb)
                pk = rel_action(self._proj(kmaps[1 - w][e], ga), ga, gb)
                Q.append(pq.permute(0, 2, 3, 1).reshape(-1, pq.shape[1]))
                K.append(pk.permute(0, 2, 3, 1).reshape(-1, pk.shape[1]))
                tokens.append(Q[-1].shape[0])
            Q, K = torch.cat(Q), torch.cat(K)
            if not self.ser_grad:
                Q, K = Q.detach(), K.detach()
            L.append(ntxent(Q, K, tokens, self.tau))
        loss_equiv = 0.5 * (L[0] + L[1])
        if self.ser_grad:
            loss = loss_inv + self.lam * loss_equiv
        else:
            loss = loss_inv + self.lam * loss_equiv.detach()
        return loss, loss_inv, loss_equiv, t

    @torch.no_grad()
    def ema(self, m, projector_quirk):
        """main_dino.py:388-391; projector_quirk=False skips the shared (aliased) tensors."""
        for param_q, param_k in zip(self.student.parameters(), self.teacher.parameters()):
            if param_q is param_k and not projector_quirk:
                continue
            param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
