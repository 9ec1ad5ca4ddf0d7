// ser_config.c — see ser_config.h. The option table is the single source of truth.
#include "ser_config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ser_bf16.h"
#include "ser_kernels.h"
#include "ser_ntxent.h"
#include "ser_objective.h"

// --- allowed names of the enums (index = stored value) -----------------------------------------
static const char *const s_arch[] = {"vit_tiny", "vit_small", "vit_base", NULL};
static const char *const s_init[] = {"generic", "moco", NULL};
static const char *const s_grad[] = {"off", "on", NULL};
static const char *const s_symmetric[] = {"false", "true", "auto", NULL};
static const char *const s_group[] = {"paper", "reference", NULL};
static const char *const s_lrs[] = {"auto", "moco", "dino", "barlow", NULL};
static const char *const s_clip[] = {"per_param", "global", NULL};
static const char *const s_decay[] = {"all", "no_bias_1d", NULL};
static const char *const s_kind[] = {"auto", "imagefolder", "cifar10", "fashion_mnist",
                                     "synthetic", NULL};
static const char *const s_interp[] = {"bilinear", "bicubic", NULL};
static const char *const s_policy[] = {"torchvision", "kornia", NULL};
static const char *const s_local_mode[] = {"crops", "rotations", "center", NULL};
static const char *const s_nonfinite[] = {"abort", "skip", NULL};
static const char *const s_precision[] = {"fp32", "bf16", "auto", NULL};  // SER_PRECISION_*
static const char *const s_on_collapse[] = {"warn", "abort", NULL};
static const char *const s_reduce[] = {"coordinator", "chain", NULL};
static const char *const s_bcast[] = {"coordinator", "tree", NULL};

// --- the table ---------------------------------------------------------------------------------
// Defaults are the MoCo-v3 + SER ViT-S/16 ImageNet run of the paper's public code where the
// reference has a value; configs/ holds the other runs.
#define OPT(sec, key, type, lo, hi, def, choices, flags, help) \
    {#sec, #key, type, lo, hi, def, choices, offsetof(ser_config, sec.key), flags, help}
#define INT(sec, key, lo, hi, def, flags, help) \
    OPT(sec, key, SER_CONFIG_INT, lo, hi, def, NULL, flags, help)
#define I64(sec, key, lo, hi, def, flags, help) \
    OPT(sec, key, SER_CONFIG_I64, lo, hi, def, NULL, flags, help)
#define DBL(sec, key, lo, hi, def, flags, help) \
    OPT(sec, key, SER_CONFIG_DOUBLE, lo, hi, def, NULL, flags, help)
#define BOOL(sec, key, def, flags, help) \
    OPT(sec, key, SER_CONFIG_BOOL, 0, 1, def, NULL, flags, help)
#define ENUM(sec, key, choices, def, flags, help) \
    OPT(sec, key, SER_CONFIG_ENUM, 0, 0, def, choices, flags, help)
#define STR(sec, key, def, flags, help) \
    OPT(sec, key, SER_CONFIG_STRING, 0, 0, def, NULL, flags, help)

#define NOHASH SER_CONFIG_F_NOHASH
#define GT SER_CONFIG_F_MIN_OPEN
#define LT SER_CONFIG_F_MAX_OPEN
#define NEWKEY SER_CONFIG_F_HASH_IF_SET
#define BIG 1048576

static const ser_config_option s_options[] = {
    // [model]
    ENUM(model, arch, s_arch, "vit_small", 0,
         "ViT size: vit_tiny (192 wide, 3 heads), vit_small (384, 6), vit_base (768, 12); 12 "
         "blocks, MLP ratio 4, LayerNorm eps 1e-6."),
    INT(model, dim, 0, 4096, "0", 0,
        "Embedding width override; 0 = the arch's (small custom models for tests and CPU runs)."),
    INT(model, depth, 0, 64, "0", 0, "Number of blocks override; 0 = the arch's (12)."),
    INT(model, heads, 0, 64, "0", 0, "Attention heads override; 0 = the arch's."),
    INT(model, mlp_hidden, 0, 16384, "0", 0, "MLP hidden width override; 0 = 4 x dim."),
    INT(model, img_size, 8, 1024, "224", 0,
        "Base image size: the learnable position embedding covers (img_size/patch)^2 patches; "
        "other grids (equivariant views) resample it bicubically as the reference does."),
    INT(model, patch, 1, 64, "16", 0, "Patch size P (patch embedding kernel = stride = P)."),
    INT(model, cls_layer, 1, 64, "3", 0,
        "Block k after which [CLS] is inserted (blocks 1..k see patch tokens only). The SER "
        "feature map is taken after this same block (through norm_equiv), so there is no "
        "separate SER layer key. k = depth (12) is the baseline layout, [CLS] at the input, "
        "which has no SER map (requires ser.enabled = false)."),
    DBL(model, drop_path_rate, 0, 0.95, "0", 0,
        "Stochastic depth of the student, linspace(0, rate, depth) per block (DINO reference: "
        "0.1; MoCo and Barlow Twins: 0). Teachers never drop."),
    BOOL(model, freeze_patch_embed, "true", 0,
         "Keep the patch embedding at its initial values (MoCo reference: frozen at PyTorch's "
         "default init; DINO and Barlow Twins: trainable)."),
    ENUM(model, init, s_init, "moco", 0,
         "Weight init: moco = MoCo-v3 (xavier_uniform Linear, per-part qkv, cls N(0, 1e-6)); "
         "generic = timm/DINO (trunc_normal 0.02 Linear)."),
    // [method]
    ENUM(method, name, ser_objective_names, "moco", 0,
         "The base invariance objective on the final [CLS] embedding: MoCo-v3, DINO or Barlow "
         "Twins, or a MoCo-v3 add-on (essl, augself, equimod, stl; they also read [moco]). Only that "
         "method's section is used."),
    // [moco]
    INT(moco, dim, 1, BIG, "256", 0, "Output dimension of the projector and the predictor."),
    INT(moco, mlp_dim, 1, BIG, "4096", 0,
        "Hidden dimension of the 3-layer projector and the 2-layer predictor."),
    DBL(moco, temperature, 0, 100, "0.2", GT,
        "InfoNCE temperature T (the loss is scaled by 2T); the reference forces 0.2 for ViT."),
    DBL(moco, momentum, 0, 1, "0.99", 0,
        "Momentum-encoder EMA coefficient m0 at t = 0, raised to 1 by "
        "m(t) = 1 - 0.5(1 + cos(pi t/E))(1 - m0), t the fractional epoch."),
    INT(moco, addon_layer, 0, 64, "0", NEWKEY,
        "Layer decoupling of a MoCo add-on (essl, augself, equimod, stl): 0 = it reads the final "
        "[CLS] (the paper's add-on rows); k = it reads, for every view, the mean over tokens of "
        "the block-k patch map after norm_equiv (the paper's decoupled rows). k must be "
        "model.cls_layer, where the SER layout has that map; the SER term, if on, is unchanged."),
    // [dino]
    INT(dino, out_dim, 1, BIG, "65536", 0, "DINO head output dimension (prototypes)."),
    INT(dino, hidden_dim, 1, BIG, "2048", 0, "Hidden width of the 3-layer DINO head MLP."),
    INT(dino, bottleneck_dim, 1, BIG, "256", 0,
        "Bottleneck before the L2 normalisation and the weight-normalised last layer."),
    BOOL(dino, projector_ema_quirk, "false", 0,
         "Reproduce the public code's teacher EMA of the shared projector_equiv, which scales it by "
         "m(2-m) every step (an in-place aliasing effect). Off: the projector is shared, not "
         "averaged."),
    BOOL(dino, norm_last_layer, "false", 0,
         "Freeze the weight-norm gain g of the last layer at 1 (reference ViT-S: false)."),
    INT(dino, freeze_last_layer_epochs, 0, 100000, "1", 0,
        "Epochs during which the last layer gets no update (its gradients are dropped: no "
        "AdamW step, no decay)."),
    DBL(dino, student_temp, 0, 100, "0.1", GT, "Student softmax temperature."),
    DBL(dino, teacher_temp, 0, 100, "0.04", GT,
        "Teacher temperature at epoch 0 (the start of its warmup)."),
    DBL(dino, teacher_temp_final, 0, 100, "0.07", GT,
        "Teacher temperature after the warmup."),
    INT(dino, teacher_temp_warmup_epochs, 0, 100000, "10", 0,
        "Epochs of the teacher temperature warmup: numpy.linspace(teacher_temp, "
        "teacher_temp_final, n) per epoch (endpoint included), then teacher_temp_final."),
    DBL(dino, center_momentum, 0, 1, "0.9", 0, "EMA of the teacher output centre."),
    DBL(dino, momentum, 0, 1, "0.982", 0,
        "Teacher EMA coefficient at iteration 0, raised to 1 per iteration by DINO's "
        "cosine_scheduler(m0, 1)."),
    // [barlow]
    INT(barlow, proj_dim, 1, BIG, "8192", 0,
        "Width of every layer of the 3-layer projector (8192-8192-8192)."),
    DBL(barlow, lambda_offdiag, 0, 100, "0.0051", 0,
        "Weight of the off-diagonal terms of the cross-correlation loss."),
    // [essl]
    DBL(essl, lambda, 0, 1000, "0.4", 0,
        "Weight of E-SSL's 4-way rotation cross-entropy (method.name = essl: MoCo-v3 on the two "
        "global views + lambda * CE of the rotation head on the 4 rotated local views)."),
    INT(essl, hidden, 0, BIG, "0", 0,
        "Width of the rotation head's two hidden layers; 0 = the ViT width (the reference's "
        "384 for ViT-S)."),
    INT(essl, bottleneck, 1, BIG, "256", 0,
        "Width of the rotation head's last hidden layer before the 4 logits (Linear C-C, LN, "
        "ReLU, Linear C-C, LN, ReLU, Linear C-bottleneck, LN, Linear bottleneck-4)."),
    // [augself]
    DBL(augself, crop, 0, 1000, "0.5", 0,
        "Weight of AugSelf's crop task (method.name = augself: MoCo-v3 on the two global views + "
        "crop x MSE + color x MSE of predictors of the views' parameter differences from their "
        "final [CLS] pair; no extra lambda). 0 = no crop predictor."),
    DBL(augself, color, 0, 1000, "0.5", 0,
        "Weight of AugSelf's colour task (the jitter factors' difference, (f-1)/0.8 and hue/0.2 "
        "as the reference's, also when data.jitter scales the ranges). 0 = no colour predictor."),
    INT(augself, hidden, 1, BIG, "512", 0,
        "Width of the two hidden layers of each AugSelf predictor (Linear 2C-hidden, BN, ReLU, "
        "Linear hidden-hidden, BN, ReLU, Linear hidden-4)."),
    BOOL(augself, mirror_typo, "false", 0,
         "Mirror view 2's crop centre with view 1's flip, as the augself branch's code does "
         "(utils:1246-1247, likely a typo); false = each view's own flip."),
    // [equimod]
    DBL(equimod, lambda, 0, 1000, "1", 0,
        "Weight of EquiMod's equivariance loss (method.name = equimod: MoCo-v3 on the two global "
        "views + lambda * the contrastive loss between the projected views and their prediction "
        "from the centre view x_0 and the views' standardised 18-dim transformation vectors)."),
    DBL(equimod, temperature, 0, 100, "0.2", GT,
        "Temperature of the equivariance loss (the reference's --temperature-equiv); the loss is "
        "MoCo's contrastive loss at this temperature, x 2 temperature."),
    INT(equimod, proj_dim, 1, BIG, "128", 0,
        "Width of the equivariant projection, the transformation embedding and the predictor "
        "output."),
    INT(equimod, hidden, 0, BIG, "0", 0,
        "Width of the equivariant projector's two hidden layers; 0 = the ViT width (the "
        "reference's 384 for ViT-S)."),
    // [stl]
    DBL(stl, lambda_equi, 0, 1000, "1", 0,
        "Weight of STL's equivariance loss (method.name = stl: MoCo-v3 on the two global views + "
        "lambda_equi * the two-way contrastive loss between the projected [CLS] rows and their "
        "prediction W(t) c by the hypernetwork from the pair partner's transformation embedding "
        "+ lambda_trans * the transformation loss)."),
    DBL(stl, lambda_trans, 0, 1000, "0.1", 0,
        "Weight of STL's transformation loss (the two-way contrastive loss between the "
        "transformation embeddings of the samples 2k and 2k+1, which share their augmentation)."),
    DBL(stl, temperature, 0, 100, "0.2", GT,
        "Temperature of STL's two losses; each is MoCo's contrastive loss at this temperature, x "
        "2 temperature."),
    INT(stl, trans_dim, 1, BIG, "128", 0,
        "Width of the transformation embedding (trans_backbone's hidden and output, "
        "trans_projector's) and the hypernetwork's input: the hypernetwork Linear(trans_dim -> "
        "C*C, no bias) has trans_dim * C * C parameters (18.9M at 128 and C = 384)."),
    INT(stl, proj_hidden, 1, BIG, "512", 0, "Hidden width of STL's projector (projector_stl)."),
    INT(stl, proj_dim, 1, BIG, "128", 0, "Output width of STL's projector (projector_stl)."),
    // [ser]
    BOOL(ser, enabled, "true", 0,
         "Soft Equivariance Regularization: equivariant sub-batch, SER map and loss."),
    ENUM(ser, grad, s_grad, "on", 0,
         "on: the SER loss backpropagates (the paper's objective). off: the loss is computed "
         "and logged but gives no gradient, and projector_equiv/norm_equiv stay at their init "
         "(what the paper's public code does)."),
    DBL(ser, lambda, 0, 1000, "1.0", 0,
        "Weight of the SER loss (MoCo and Barlow Twins reference: 1.0; DINO: 0.3)."),
    DBL(ser, tau, 0, 100, "0.5", GT,
        "Temperature of the patch-wise NT-Xent (MoCo run_pretrain.sh: 0.5; DINO and Barlow "
        "Twins: 0.4; the evaluated MoCo checkpoints used 0.4)."),
    DBL(ser, ratio, 0, 1, "0.01", 0,
        "Share of the global batch that is equivariant: round(ratio * global_batch) with ties to "
        "even, the last positions of the batch (0.01 of 256 = 3, 253 invariant). The reference "
        "rounds per GPU: its count is shards * round(ratio * global_batch / shards)."),
    INT(ser, warmup_epochs, 0, 100000, "0", 0,
        "Epochs without equivariant samples at the start (constant_scheduler warmup)."),
    INT(ser, rest_epochs, 0, 100000, "0", 0,
        "Epochs without equivariant samples at the end (constant_scheduler rest)."),
    ENUM(ser, group_sampling, s_group, "paper", 0,
         "paper: the two views' transforms are drawn independently per sample; reference: "
         "scale/aspect/rot90 shared per shard and view 1's flip and 180-degree rotation forced "
         "to the opposite of view 0's (as the paper's public code draws them)."),
    DBL(ser, scale_min, 0, 10, "0.7", GT,
        "Lower bound of the area factor of the equivariant scaling, U(scale_min, scale_max)."),
    DBL(ser, scale_max, 0, 10, "1.3", GT, "Upper bound of the area factor."),
    DBL(ser, aspect_min, 0, 10, "0.75", GT,
        "Lower bound of the aspect ratio, log-uniform in [aspect_min, aspect_max]."),
    DBL(ser, aspect_max, 0, 10, "1.3333333333333333", GT, "Upper bound of the aspect ratio."),
    INT(ser, proj_dim, 1, BIG, "512", 0,
        "Width of projector_equiv (1x1 conv, GELU, 1x1 conv, no bias)."),
    ENUM(ser, symmetric, s_symmetric, "auto", 0,
         "Directions of the SER loss: true = both, averaged, (L0 + L1)/2; false = one direction, "
         "L0; auto = the reference's: both for MoCo and DINO, one for Barlow Twins."),
    INT(ser, local_pairs, 0, SER_MAX_LOCAL_PAIRS, "0", NEWKEY,
        "Local SER pairs per equivariant sample: 0 = SER on the global pair against the teacher; "
        "P > 0 = the paper's 2+4-view SER (erl_local4 at P = 2): every equivariant sample also "
        "gets P pairs of views of one local crop each (data.local_size, scale "
        "data.local_crop_min..max, each view its own photometric draw and group element), and "
        "every pair, the global one too, is student against student with the SimCLR-style "
        "patch NT-Xent (ser_ntxent.h), loss_equiv = the sum over the 1 + P pairs. MoCo-v3 only."),
    // [optim]
    DBL(optim, lr, 0, 10, "3e-4", 0,
        "Base learning rate per 256 images: the peak is lr * global_batch / 256 "
        "(MoCo 3e-4 -> 2.4e-3 at 2048; DINO and Barlow Twins 1e-4 -> 8e-4)."),
    DBL(optim, min_lr, 0, 10, "0", 0,
        "Final lr of the dino schedule (DINO reference: 1e-5). The moco schedule ends at 0, "
        "the barlow one at peak/1000."),
    ENUM(optim, lr_schedule, s_lrs, "auto", 0,
         "auto = the method's. moco: linear warmup on the fractional epoch, then half-cosine "
         "to 0; dino: cosine_scheduler (linspace warmup from 0, cosine to min_lr per "
         "iteration); barlow: linear warmup, then cosine to peak/1000."),
    DBL(optim, weight_decay, 0, 10, "0.1", 0, "AdamW weight decay at iteration 0."),
    DBL(optim, weight_decay_end, 0, 10, "0.1", 0,
        "Weight decay at the end of a per-iteration cosine from weight_decay (DINO: 0.04 -> "
        "0.4); equal values give a constant (MoCo, Barlow Twins: 0.1)."),
    DBL(optim, beta1, 0, 1, "0.9", LT, "AdamW beta1."),
    DBL(optim, beta2, 0, 1, "0.999", LT, "AdamW beta2."),
    DBL(optim, eps, 0, 1, "1e-8", 0, "AdamW epsilon."),
    INT(optim, warmup_epochs, 0, 100000, "10", 0, "Epochs of linear lr warmup (< epochs)."),
    INT(optim, epochs, 1, 100000, "100", 0,
        "Epochs of the schedules (lr, weight decay, momentum, SER ratio)."),
    DBL(optim, clip, 0, 1e6, "0", 0,
        "Gradient clipping max norm; 0 = off (DINO and Barlow Twins reference: 0.3)."),
    ENUM(optim, clip_mode, s_clip, "per_param", 0,
         "per_param: each tensor's gradient scaled to norm <= clip (the reference's "
         "utils.clip_gradients); global: torch.nn.utils.clip_grad_norm_ over all tensors."),
    ENUM(optim, decay, s_decay, "all", 0,
         "Tensors that get weight decay. all: every trainable tensor, biases and norms "
         "included (MoCo, Barlow Twins); no_bias_1d: not those named *.bias or with one "
         "dimension (DINO's get_params_groups; pos_embed and cls_token are decayed)."),
    // [data]
    STR(data, path, "", NOHASH,
        "Dataset root (ImageFolder tree, CIFAR-10 or Fashion-MNIST files)."),
    ENUM(data, kind, s_kind, "auto", 0,
         "Dataset format; auto: CIFAR-10 if data_batch_1.bin exists, Fashion-MNIST if its "
         "files exist, else ImageFolder; synthetic: generated images, no files."),
    INT(data, global_batch, 1, BIG, "2048", 0, "Images per optimizer step (all shards)."),
    INT(data, shards, 1, 65536, "8", 0,
        "Fixed shards of the global batch (the reference's GPUs). Results depend on it, not on "
        "the number of workers."),
    DBL(data, crop_min, 0, 1, "0.08", GT,
        "RandomResizedCrop scale (crop_min, 1) of the invariant views (DINO reference: 0.25)."),
    INT(data, local_crops, 0, SER_MAX_LOCAL, "0", 0,
        "Local views per image (multi-crop; DINO's local_crops_number): each its own "
        "RandomResizedCrop with scale (local_crop_min, local_crop_max) at local_size, hflip, and "
        "DINO's local photometrics (blur p 0.5, no solarize); run by the student only. dino: "
        "every local view against both teacher globals; moco: 2 + L queries against the two "
        "global keys, the 2(L + 1) contrastive terms summed (the paper's inv_local4 at L = 4)."),
    INT(data, local_size, 0, 4096, "0", 0,
        "Side of the local views in pixels, a multiple of model.patch; 0 = model.img_size * "
        "96 / 224 rounded to a multiple of the patch (96 for 224-px images, 12 for 32-px ones "
        "with patch 4)."),
    ENUM(data, local_mode, s_local_mode, "crops", 0,
         "crops: every local view its own crop. rotations: E-SSL's rotated crops, one crop per "
         "image (the streams of local view 0) in its 4 rotations by 0, 90, 180 and 270 degrees "
         "counter-clockwise (local view k is rotated k times; data.local_crops must be 4). With "
         "method moco they are extra queries (the paper's inv_essl baseline); essl predicts the "
         "rotation. center: EquiMod's x_0, the image resized to local_size * 256 / 224 on its "
         "shorter side and centre-cropped to local_size, unaugmented (data.local_crops = 1)."),
    DBL(data, local_crop_min, 0, 1, "0.05", GT, "Smallest area share of a local crop."),
    DBL(data, local_crop_max, 0, 1, "0.4", 0,
        "Largest area share of a local crop (DINO: 0.4; the paper's 2+4 runs: 0.25)."),
    DBL(data, jitter, 0, 1, "1", 0,
        "Strength of the colour jitter: its four ranges scaled from MoCo-v3's (brightness and "
        "contrast 0.4, saturation 0.2, hue 0.1, applied with p 0.8); 0 = none."),
    DBL(data, blur_sigma, 0, 100, "2", 0,
        "Largest Gaussian blur sigma, in pixels of the view (sigma ~ U(0.1, blur_sigma), p 1.0 on "
        "view 0 and 0.1 on view 1, as MoCo-v3); 0 = no blur. MoCo-v3's 2 is for 224 px views: "
        "small images want much less."),
    DBL(data, gray_prob, 0, 1, "0.2", 0, "Probability of the grayscale conversion, per view."),
    DBL(data, solarize_prob, 0, 1, "0.2", 0,
        "Probability of solarizing view 1 (view 0 never is, as MoCo-v3)."),
    ENUM(data, interpolation, s_interp, "bilinear", 0,
         "Resize interpolation of the crops (MoCo: bilinear; DINO and Barlow Twins: bicubic)."),
    ENUM(data, policy, s_policy, "kornia", 0,
         "Photometric policy: kornia = the GPU policy of the paper's public code (kornia "
         "augmentations); torchvision = the classic CPU one."),
    I64(data, seed, 0, 9e18, "0", 0,
        "Job seed: every random draw is keyed by (seed, epoch, sample, view, purpose)."),
    INT(data, workers, 0, 1024, "4", NOHASH,
        "Decode/augment threads per data loader; 0 = all online cores."),
    DBL(data, max_bad_fraction, 0, 1, "0.01", NOHASH,
        "Bad-file budget: a file that cannot be decoded is replaced by the next good one, but "
        "once more than this fraction of the split's files (and more than 10) are bad the "
        "loader refuses its shards and the job stops, naming them; 1 = only when none decodes."),
    INT(data, synthetic_images, 1, 1 << 30, "4096", 0, "Images of the synthetic dataset."),
    I64(data, iters_per_epoch, 0, 9e18, "0", 0,
        "Steps per schedule epoch; 0 = ceil(images in the train split / global_batch), counted "
        "from the dataset by the coordinator at start (a coordinator without the data must set "
        "it). A checkpoint keeps the value it was trained with."),
    // [run]
    STR(run, name, "ser", NOHASH, "Job name in logs and on the status page."),
    I64(run, max_steps, 0, 9e18, "0", NOHASH,
        "Stop after this many steps; 0 = the whole schedule (optim.epochs). The schedules "
        "always span optim.epochs, so a stopped run resumes exactly."),
    INT(run, checkpoint_every, 0, 1 << 30, "1000", NOHASH,
        "Steps between checkpoints; 0 = only at the end."),
    INT(run, keep_checkpoints, 1, 100000, "3", NOHASH, "Checkpoints kept (the last K)."),
    STR(run, out_dir, "runs", NOHASH, "Folder for checkpoints and logs."),
    INT(run, log_every, 1, 1 << 30, "10", NOHASH, "Steps between log lines."),
    INT(run, threads, 0, 1024, "0", 0,
        "Compute threads per worker; 0 = all online cores. Hashed: OpenBLAS products can change "
        "in the last bits with the thread count, so bitwise reproducibility across machines "
        "needs the same explicit value everywhere (common/nn/ser_kernels.h)."),
    ENUM(run, precision, s_precision, "fp32", NEWKEY,
         "Linear layers' products (ViT, patch embedding, heads): fp32 through OpenBLAS, or bf16 "
         "on the CPU's bf16 units through oneDNN (inputs rounded to bf16 as PyTorch's CPU "
         "autocast does, sums and outputs in fp32; 2-4x faster products where the CPU has "
         "AVX512-BF16 or AMX, refused where it has not). Attention, norms, losses and the optimizer stay "
         "fp32. auto = bf16 where the CPU has native bf16, else fp32, decided when the config "
         "is read, so the job's hash and checkpoints name the precision it ran with. Hashed: "
         "the two give different bits."),
    ENUM(run, nonfinite, s_nonfinite, "abort", 0,
         "A non-finite loss or gradient (the coordinator names the shard and worker of a "
         "non-finite gradient): abort the job, or skip the step. Either way the step's update "
         "never reaches the parameters or AdamW; a skipped MoCo step keeps its momentum-encoder "
         "EMA and BatchNorm buffer updates. `ser step` always aborts."),
    DBL(run, collapse_std, 0, 10, "0.1", NOHASH,
        "Collapse monitor (cls_std: the spread of the student's L2-normalised final [CLS] over "
        "the batch, ~1 spread, 0 collapsed; ~0.8 in a healthy demo run): below this for "
        "run.collapse_steps steps in a row, the job says so once (run.on_collapse)."),
    INT(run, collapse_steps, 0, 1 << 30, "50", NOHASH,
        "Steps in a row below run.collapse_std that count as a collapse; 0 = never."),
    ENUM(run, on_collapse, s_on_collapse, "warn", NOHASH,
         "On a collapse: log one warning (and go on), or checkpoint and stop the job (exit 1)."),
    // [eval]
    I64(eval, knn_every, -1, 9e18, "0", NOHASH,
        "Online kNN monitor: steps between measurements of the student's kNN top-1 on a fixed "
        "labelled subset (and at the end); 0 = once per epoch; -1 = off. It reads the weights "
        "only: the training numbers are the same with it on or off."),
    INT(eval, knn_train, 1, 1 << 24, "2000", NOHASH,
        "Train images of the monitor's class-balanced subset (the memory bank)."),
    INT(eval, knn_test, 1, 1 << 24, "1000", NOHASH, "Test images of the monitor's subset."),
    INT(eval, knn_k, 1, 10000, "20", NOHASH, "Neighbours of the kNN vote (as `ser eval knn`)."),
    DBL(eval, knn_temperature, 0, 100, "0.07", NOHASH | GT, "Temperature of the kNN vote weights."),
    STR(eval, knn_data, "", NOHASH,
        "Labelled data of the monitor, as `ser eval --data` takes it (fashion-mnist:DIR, "
        "cifar10:DIR, imagefolder:DIR, DIR); empty = data.path when it has labels (Fashion-MNIST, "
        "CIFAR-10, ImageFolder), none for synthetic data."),
    // [cluster]
    STR(cluster, coordinator, "127.0.0.1", NOHASH, "Host name or address of the coordinator."),
    INT(cluster, port, 0, 65535, "5555", NOHASH, "Coordinator control port; 0 = ephemeral."),
    INT(cluster, data_port, 0, 65535, "5556", NOHASH, "Data-loader port; 0 = ephemeral."),
    INT(cluster, status_port, -1, 65535, "8080", NOHASH,
        "HTTP status port; 0 = ephemeral, -1 = off."),
    STR(cluster, status_bind, "127.0.0.1", NOHASH,
        "Address the status port binds to (localhost unless set)."),
    INT(cluster, heartbeat_ms, 10, 3600000, "1000", NOHASH, "Heartbeat interval."),
    INT(cluster, timeout_ms, 100, 86400000, "10000", NOHASH,
        "A peer silent for this long is declared dead (> heartbeat_ms)."),
    INT(cluster, io_threads, 0, 64, "0", NOHASH,
        "ZeroMQ I/O threads of the coordinator (each peer's connection is served by one; with "
        "CURVE one thread encrypts about 0.9 GB/s): 0 = 2 with CURVE, 1 without."),
    INT(cluster, task_timeout_ms, 0, 86400000, "0", NOHASH,
        "A shard's forward or backward unanswered this long by a worker that still heartbeats "
        "goes to another worker (its late answer is dropped); a worker that misses it twice gets "
        "no more work. 0 = 10 x the slowest task the job has completed, at least 60 s (10 "
        "minutes before the first)."),
    ENUM(cluster, reduce, s_reduce, "coordinator", NOHASH,
         "Where the shard gradients are summed: at the coordinator (it receives one gradient per "
         "shard), or along a chain of the workers (worker r of N gets the contiguous shards "
         "floor(rS/N)..floor((r+1)S/N); each adds its shards to the running sum it receives from "
         "the previous holder and passes it on in chunks; the coordinator receives one gradient "
         "per step). The same bits either way. A chain that breaks (a holder lost, a chunk "
         "lost) runs again within the step, a lost holder's shards computed again by another "
         "worker; after 3 broken rounds the coordinator sums that step itself "
         "(docs/cost-model.md)."),
    INT(cluster, reduce_chunk, 1024, 1 << 28, "1048576", NOHASH,
        "Floats per chunk of the chain's running sum (cluster.reduce = chain) and of the "
        "parameters (cluster.broadcast = tree): a worker passes on each chunk as soon as it has "
        "it (and, for the sum, has added its shards to it)."),
    ENUM(cluster, broadcast, s_bcast, "coordinator", NOHASH,
         "How each step's parameters reach the workers: from the coordinator to every worker "
         "(4P bytes each through its link), or down a binary tree of the workers in chunks (the "
         "coordinator sends them once, to the root; each worker passes every chunk on to its two "
         "children as it arrives and checks the step and an XXH3 hash of the whole before "
         "computing with them). A worker the tree does not reach in time "
         "(cluster.timeout_ms) is sent them by the coordinator; one that does not hold the "
         "previous step's teacher (DINO, MoCo) is sent them directly, teacher included."),
    STR(cluster, curve_key, "", NOHASH,
        "This process's CURVE keypair file (`ser keygen FILE`); every socket of the job is then "
        "encrypted and authenticated. Empty: plaintext (only on one host unless plaintext = true)."),
    STR(cluster, curve_server_key, "", NOHASH,
        "Public key file of the servers (coordinator and loaders share one server keypair); "
        "empty: curve_key's own public half (one key for the whole job)."),
    STR(cluster, curve_allow, "", NOHASH,
        "Servers: file of client public keys allowed to connect (one per line, as `ser keygen` "
        "writes FILE.pub); empty: curve_key's own public key only."),
    BOOL(cluster, plaintext, "false", NOHASH,
        "Allow plaintext sockets bound to addresses other than the loopback (a trusted network)."),
};

#undef OPT
#undef INT
#undef I64
#undef DBL
#undef BOOL
#undef ENUM
#undef STR
#undef NOHASH
#undef GT
#undef LT
#undef BIG

#define N_OPTIONS ((int)(sizeof s_options / sizeof s_options[0]))

static int s_max_open(const ser_config_option *o) {
    return (o->flags & SER_CONFIG_F_MAX_OPEN) != 0;
}

const ser_config_option *ser_config_options(int *n) {
    if (n) *n = N_OPTIONS;
    return s_options;
}

// --- helpers -----------------------------------------------------------------------------------
static void *s_field(ser_config *c, const ser_config_option *o) { return (char *)c + o->offset; }
static const void *s_cfield(const ser_config *c, const ser_config_option *o) {
    return (const char *)c + o->offset;
}

static const ser_config_option *s_find(const char *section, const char *name) {
    for (int i = 0; i < N_OPTIONS; i++)
        if (strcmp(s_options[i].section, section) == 0 && strcmp(s_options[i].name, name) == 0)
            return &s_options[i];
    return NULL;
}

static int s_has_section(const char *section) {
    for (int i = 0; i < N_OPTIONS; i++)
        if (strcmp(s_options[i].section, section) == 0) return 1;
    return 0;
}

// "section.key" -> the option, or NULL.
static const ser_config_option *s_find_key(const char *key) {
    const char *dot = strchr(key, '.');
    if (!dot || dot == key) return NULL;
    char sec[64];
    size_t n = (size_t)(dot - key);
    if (n >= sizeof sec) return NULL;
    memcpy(sec, key, n);
    sec[n] = 0;
    return s_find(sec, dot + 1);
}

// Appends to buf (of n bytes, NUL-terminated) without overflowing; truncates with "...".
static void s_cat(char *buf, size_t n, const char *fmt, ...) SER_FMT(3, 4);
static void s_cat(char *buf, size_t n, const char *fmt, ...) {
    size_t used = strlen(buf);
    if (used + 1 >= n) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf + used, n - used, fmt, ap);
    va_end(ap);
    if (w >= 0 && (size_t)w >= n - used && n > 4) memcpy(buf + n - 4, "...", 4);
}

static void s_list_sections(char *buf, size_t n) {
    for (int i = 0; i < N_OPTIONS; i++) {
        int first = 1;
        for (int k = 0; k < i; k++)
            if (strcmp(s_options[k].section, s_options[i].section) == 0) first = 0;
        if (first) s_cat(buf, n, "%s%s", i ? ", " : "", s_options[i].section);
    }
}

static void s_list_keys(char *buf, size_t n, const char *section) {
    int k = 0;
    for (int i = 0; i < N_OPTIONS; i++)
        if (strcmp(s_options[i].section, section) == 0)
            s_cat(buf, n, "%s%s", k++ ? ", " : "", s_options[i].name);
}

static void s_list_choices(char *buf, size_t n, const char *const *choices) {
    for (int i = 0; choices[i]; i++) s_cat(buf, n, "%s%s", i ? ", " : "", choices[i]);
}

static void s_range(const ser_config_option *o, char *buf, size_t n) {
    int isint = o->type != SER_CONFIG_DOUBLE;
    int w = snprintf(buf, n, isint ? "%s%.0f, %.0f%s" : "%s%g, %g%s",
                     (o->flags & SER_CONFIG_F_MIN_OPEN) ? "(" : "[", o->min, o->max,
                     s_max_open(o) ? ")" : "]");
    SER_ASSERT(w > 0 && (size_t)w < n);  // callers size buf for the widest range
}

// Shortest "%.*g" that reads back as the same double.
static void s_fmt_double(double x, char *buf, size_t n) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, x);
        if (strtod(buf, NULL) == x) return;
    }
}

// The canonical text of one value.
static void s_format(const ser_config *c, const ser_config_option *o, char *buf, size_t n) {
    const void *f = s_cfield(c, o);
    switch (o->type) {
    case SER_CONFIG_INT: snprintf(buf, n, "%d", *(const int *)f); break;
    case SER_CONFIG_I64: snprintf(buf, n, "%lld", (long long)*(const int64_t *)f); break;
    case SER_CONFIG_DOUBLE: s_fmt_double(*(const double *)f, buf, n); break;
    case SER_CONFIG_BOOL: snprintf(buf, n, "%s", *(const int *)f ? "true" : "false"); break;
    case SER_CONFIG_ENUM: {
        int v = *(const int *)f;
        snprintf(buf, n, "%s", o->choices[v]);
        break;
    }
    case SER_CONFIG_STRING: snprintf(buf, n, "%s", (const char *)f); break;
    }
}

// Parses text into the option's field of c; on failure writes the reason into why.
static int s_parse_value(ser_config *c, const ser_config_option *o, const char *v, char *why,
                         size_t nwhy) {
    void *f = s_field(c, o);
    char range[96];
    s_range(o, range, sizeof range);
    switch (o->type) {
    case SER_CONFIG_INT:
    case SER_CONFIG_I64: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (end == v || *end || errno == ERANGE || isspace((unsigned char)*v)) {
            snprintf(why, nwhy, "not an integer (allowed: %s)", range);
            return SER_ECONFIG;
        }
        if ((double)x < o->min || (double)x > o->max) {
            snprintf(why, nwhy, "must be in %s", range);
            return SER_ECONFIG;
        }
        if (o->type == SER_CONFIG_INT)
            *(int *)f = (int)x;
        else
            *(int64_t *)f = (int64_t)x;
        return SER_OK;
    }
    case SER_CONFIG_DOUBLE: {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (end == v || *end || isspace((unsigned char)*v)) {
            snprintf(why, nwhy, "not a number (allowed: %s)", range);
            return SER_ECONFIG;
        }
        int lo_ok = (o->flags & SER_CONFIG_F_MIN_OPEN) ? x > o->min : x >= o->min;
        int hi_ok = s_max_open(o) ? x < o->max : x <= o->max;
        if (!isfinite(x) || !lo_ok || !hi_ok) {
            snprintf(why, nwhy, "must be in %s", range);
            return SER_ECONFIG;
        }
        *(double *)f = x;
        return SER_OK;
    }
    case SER_CONFIG_BOOL: {
        static const char *const yes[] = {"true", "on", "yes", "1"};
        static const char *const no[] = {"false", "off", "no", "0"};
        for (int i = 0; i < 4; i++) {
            if (strcasecmp(v, yes[i]) == 0) return *(int *)f = 1, SER_OK;
            if (strcasecmp(v, no[i]) == 0) return *(int *)f = 0, SER_OK;
        }
        snprintf(why, nwhy, "must be one of true, false (or on/off, yes/no, 1/0)");
        return SER_ECONFIG;
    }
    case SER_CONFIG_ENUM: {
        for (int i = 0; o->choices[i]; i++) {
            if (strcmp(v, o->choices[i]) != 0) continue;
            *(int *)f = i;
            // run.precision = auto becomes what this CPU runs, so the hash names it.
            if (f == (void *)&c->run.precision && i == SER_PRECISION_AUTO)
                *(int *)f = ser_bf16_supported() ? SER_PRECISION_BF16 : SER_PRECISION_FP32;
            return SER_OK;
        }
        why[0] = 0;
        s_cat(why, nwhy, "must be one of ");
        s_list_choices(why, nwhy, o->choices);
        return SER_ECONFIG;
    }
    case SER_CONFIG_STRING: {
        size_t len = strlen(v);
        if (len >= SER_CONFIG_STR_LEN) {
            snprintf(why, nwhy, "longer than %d characters", SER_CONFIG_STR_LEN - 1);
            return SER_ECONFIG;
        }
        // Everything must survive a dump and reload through inih.
        for (size_t i = 0; i < len; i++) {
            unsigned char ch = (unsigned char)v[i];
            if (ch < 0x20 || ch == 0x7f) {
                snprintf(why, nwhy, "contains a control character");
                return SER_ECONFIG;
            }
            // In a dump the value follows "key = ", so a ';' first is after a blank too.
            if (ch == ';' && (i == 0 || isspace((unsigned char)v[i - 1]))) {
                snprintf(why, nwhy, "contains ' ;' or starts with ';' (an inline comment in INI)");
                return SER_ECONFIG;
            }
        }
        if (len && (isspace((unsigned char)v[0]) || isspace((unsigned char)v[len - 1]))) {
            snprintf(why, nwhy, "has leading or trailing blanks");
            return SER_ECONFIG;
        }
        memcpy(f, v, len + 1);
        return SER_OK;
    }
    }
    return SER_ECONFIG;
}

// A value as quoted in a message: at most 48 characters, then "...".
static const char *s_show(const char *v, char buf[64]) {
    size_t n = strlen(v);
    if (n <= 48) return v;
    memcpy(buf, v, 45);
    memcpy(buf + 45, "...", 4);
    return buf;
}

static void s_err(char err[SER_ERR_LEN], const char *fmt, ...) SER_FMT(2, 3);
static void s_err(char err[SER_ERR_LEN], const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, SER_ERR_LEN, fmt, ap);
    va_end(ap);
}

// --- defaults, set -----------------------------------------------------------------------------
void ser_config_defaults(ser_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    char why[SER_ERR_LEN];
    for (int i = 0; i < N_OPTIONS; i++) {
        int rc = s_parse_value(cfg, &s_options[i], s_options[i].def, why, sizeof why);
        if (rc) SER_ABORT("config table: default of %s.%s: %s", s_options[i].section,
                          s_options[i].name, why);
    }
}

int ser_config_set(ser_config *cfg, const char *key, const char *value, char err[SER_ERR_LEN]) {
    const ser_config_option *o = s_find_key(key);
    if (!o) {
        const char *dot = strchr(key, '.');
        char sec[64] = "";
        if (dot && (size_t)(dot - key) < sizeof sec) memcpy(sec, key, (size_t)(dot - key));
        char list[SER_ERR_LEN] = "";
        if (!dot) {
            s_err(err, "%s: not a section.key name", key);
        } else if (!s_has_section(sec)) {
            s_list_sections(list, sizeof list);
            s_err(err, "%s: unknown section [%s] (sections: %s)", key, sec, list);
        } else {
            s_list_keys(list, sizeof list, sec);
            s_err(err, "%s: unknown key in [%s] (keys: %s)", key, sec, list);
        }
        return SER_ECONFIG;
    }
    ser_config tmp = *cfg;
    char why[SER_ERR_LEN];
    if (s_parse_value(&tmp, o, value, why, sizeof why)) {
        char shown[64];
        s_err(err, "%s.%s = %s: %s", o->section, o->name, s_show(value, shown), why);
        return SER_ECONFIG;
    }
    *cfg = tmp;
    return SER_OK;
}

int ser_config_set_arg(ser_config *cfg, const char *arg, char err[SER_ERR_LEN]) {
    const char *eq = strchr(arg, '=');
    char key[128];
    if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof key) {
        s_err(err, "%s: expected section.key=value", arg);
        return SER_ECONFIG;
    }
    memcpy(key, arg, (size_t)(eq - arg));
    key[eq - arg] = 0;
    // Allow "key = value" with blanks around '=' as in the file.
    size_t kl = strlen(key);
    while (kl && isspace((unsigned char)key[kl - 1])) key[--kl] = 0;
    const char *v = eq + 1;
    while (isspace((unsigned char)*v)) v++;
    char val[SER_CONFIG_STR_LEN + 8];
    snprintf(val, sizeof val, "%s", v);
    size_t vl = strlen(val);
    while (vl && isspace((unsigned char)val[vl - 1])) val[--vl] = 0;
    return ser_config_set(cfg, key, val, err);
}

// --- the INI parser ----------------------------------------------------------------------------
// Lines longer than this are split by inih's fixed line buffer; they are refused up front.
#define S_MAX_LINE (INI_MAX_LINE - 3)

typedef struct s_parse {
    ser_config *cfg;   // the copy being filled
    const char *name;  // label of the source in messages
    const char *text;  // reader cursor
    int line;          // lines handed to inih so far = the line being parsed
    int err_line;      // line of the first error, 0 = none
    char err[SER_ERR_LEN];
    int seen[N_OPTIONS];  // line where each option was set in this source
} s_parse;

// fgets() over the text; every call returns one line (lengths were checked), so the number
// of calls is the current line number inside the handler.
static char *s_reader(char *str, int num, void *stream) {
    s_parse *p = stream;
    if (!*p->text) return NULL;
    int i = 0;
    while (i < num - 1 && p->text[i]) {
        str[i] = p->text[i];
        if (p->text[i++] == '\n') break;
    }
    str[i] = 0;
    p->text += i;
    p->line++;
    return str;
}

static int s_handler(void *user, const char *section, const char *name, const char *value) {
    s_parse *p = user;
    if (p->err_line) return 1;  // only the first error is reported
    char list[SER_ERR_LEN] = "", why[SER_ERR_LEN];
    const ser_config_option *o = NULL;
    if (!section[0]) {
        s_err(p->err, "%s:%d: %s: key outside any [section]", p->name, p->line,
                 name);
    } else if (!s_has_section(section)) {
        s_list_sections(list, sizeof list);
        s_err(p->err, "%s:%d: [%s]: unknown section (sections: %s)", p->name,
                 p->line, section, list);
    } else if (!(o = s_find(section, name))) {
        s_list_keys(list, sizeof list, section);
        s_err(p->err, "%s:%d: %s.%s: unknown key in [%s] (keys: %s)", p->name,
                 p->line, section, name, section, list);
    } else {
        int idx = (int)(o - s_options);
        if (p->seen[idx]) {
            snprintf(p->err, sizeof p->err,
                     "%s:%d: %s.%s: given twice (first on line %d; an indented line continues "
                     "the previous value)",
                     p->name, p->line, section, name, p->seen[idx]);
        } else if (s_parse_value(p->cfg, o, value, why, sizeof why)) {
            char shown[64];
            s_err(p->err, "%s:%d: %s.%s = %s: %s", p->name, p->line, section, name,
                  s_show(value, shown), why);
        } else {
            p->seen[idx] = p->line;
            return 1;
        }
    }
    p->err_line = p->line;
    return 0;
}

// Parses text on top of *cfg; *cfg is unchanged on error. Cross-field rules are not checked.
static int s_parse_text(ser_config *cfg, const char *text, const char *name,
                        char err[SER_ERR_LEN]) {
    int line = 1;
    const char *s = text;
    while (*s) {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        if (len && s[len - 1] == '\r') len--;
        if (len > S_MAX_LINE) {
            s_err(err, "%s:%d: line longer than %d characters", name, line, S_MAX_LINE);
            return SER_ECONFIG;
        }
        if (!nl) break;
        s = nl + 1;
        line++;
    }
    s_parse *p = ser_xcalloc(1, sizeof *p);
    ser_config tmp = *cfg;
    p->cfg = &tmp;
    p->name = name;
    p->text = text;
    int rc = ini_parse_stream(s_reader, p, s_handler, p);
    int ret = SER_OK;
    if (rc < 0) {
        s_err(err, "%s: cannot parse (inih error %d)", name, rc);
        ret = SER_ECONFIG;
    } else if (rc > 0 && (!p->err_line || rc < p->err_line)) {
        s_err(err, "%s:%d: syntax error (expected [section] or key = value)", name, rc);
        ret = SER_ECONFIG;
    } else if (p->err_line) {
        s_err(err, "%s", p->err);
        ret = SER_ECONFIG;
    }
    if (ret == SER_OK) *cfg = tmp;
    free(p);
    return ret;
}

static char *s_read_file(const char *path, char err[SER_ERR_LEN], int *rc) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    if (!f) {
        s_err(err, "%s: %s", path, strerror(errno));
        *rc = errno == ENOENT ? SER_ENOENT : SER_EIO;
        return NULL;
    }
    size_t cap = 4096, n = 0;
    buf = ser_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            if (cap > (64u << 20)) {
                s_err(err, "%s: larger than 64 MiB", path);
                *rc = SER_ECONFIG;
                goto fail;
            }
            char *nb = realloc(buf, cap);
            if (!nb) SER_ABORT("out of memory");
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        s_err(err, "%s: read error", path);
        *rc = SER_EIO;
        goto fail;
    }
    if (memchr(buf, 0, n)) {
        s_err(err, "%s: contains a NUL byte (not a text file)", path);
        *rc = SER_ECONFIG;
        goto fail;
    }
    buf[n] = 0;
    fclose(f);
    *rc = SER_OK;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

int ser_config_load_string(ser_config *cfg, const char *text, const char *name,
                           char err[SER_ERR_LEN]) {
    ser_config tmp = *cfg;
    int rc = s_parse_text(&tmp, text, name, err);
    if (rc) return rc;
    char why[SER_ERR_LEN];
    if ((rc = ser_config_validate(&tmp, why))) {
        s_err(err, "%s: %s", name, why);
        return rc;
    }
    *cfg = tmp;
    return SER_OK;
}

int ser_config_load_file(ser_config *cfg, const char *path, char err[SER_ERR_LEN]) {
    int rc;
    char *text = s_read_file(path, err, &rc);
    if (!text) return rc;
    rc = ser_config_load_string(cfg, text, path, err);
    free(text);
    return rc;
}

int ser_config_load(ser_config *cfg, const char *path, int n_overrides,
                    const char *const *overrides, char err[SER_ERR_LEN]) {
    ser_config tmp;
    ser_config_defaults(&tmp);
    int rc;
    if (path) {
        char *text = s_read_file(path, err, &rc);
        if (!text) return rc;
        rc = s_parse_text(&tmp, text, path, err);
        free(text);
        if (rc) return rc;
    }
    char why[SER_ERR_LEN];
    for (int i = 0; i < n_overrides; i++) {
        if ((rc = ser_config_set_arg(&tmp, overrides[i], why))) {
            s_err(err, "--set %s", why);
            return rc;
        }
    }
    if ((rc = ser_config_validate(&tmp, why))) {
        s_err(err, "%s: %s", path ? path : "config", why);
        return rc;
    }
    *cfg = tmp;
    return SER_OK;
}

// --- cross-field rules -------------------------------------------------------------------------
int ser_config_local_size(const ser_config *cfg) {
    if (cfg->data.local_size > 0) return cfg->data.local_size;
    int P = cfg->model.patch, n = (int)lround(cfg->model.img_size * 96.0 / 224.0 / P);
    return (n < 1 ? 1 : n) * P;
}

int ser_config_grid_max(const ser_config *cfg) {
    const ser_config_ser *sr = &cfg->ser;
    double amax = sr->aspect_max > 1 / sr->aspect_min ? sr->aspect_max : 1 / sr->aspect_min;
    int side = cfg->model.img_size;
    if (sr->enabled && sr->local_pairs && ser_config_local_size(cfg) > side)
        side = ser_config_local_size(cfg);
    int g0 = side / cfg->model.patch;
    return (int)ceil(2.0 * g0 * sqrt(sr->scale_max * amax)) + 2;
}

int ser_config_addon_pooled(const ser_config *cfg) {
    int m = cfg->method.name;
    return cfg->moco.addon_layer > 0 &&
           (m == SER_CONFIG_METHOD_ESSL || m == SER_CONFIG_METHOD_AUGSELF ||
            m == SER_CONFIG_METHOD_EQUIMOD || m == SER_CONFIG_METHOD_STL);
}

int ser_config_to_vit(const ser_config *cfg, ser_vit_config *out, char err[SER_ERR_LEN]) {
    const ser_config_model *m = &cfg->model;
    if (ser_vit_config_preset(out, s_arch[m->arch], m->img_size, m->patch)) {
        s_err(err, "model.arch = %s: unknown", s_arch[m->arch]);
        return SER_ECONFIG;
    }
    if (m->dim) out->dim = m->dim, out->mlp_hidden = 4 * m->dim;
    if (m->depth) out->depth = m->depth;
    if (m->heads) out->heads = m->heads;
    if (m->mlp_hidden) out->mlp_hidden = m->mlp_hidden;
    out->cls_layer = m->cls_layer;
    out->drop_path_rate = (float)m->drop_path_rate;
    out->freeze_patch_embed = m->freeze_patch_embed;
    return ser_vit_config_check(out, err);
}

// --- memory ---------------------------------------------------------------------------------
// Floats of each part, from the sizes alone (the tables add biases and norms, a few percent).
double ser_config_memory_bytes(const ser_config *cfg, char *largest, size_t n) {
    ser_vit_config vc;
    char e[SER_ERR_LEN];
    if (ser_config_to_vit(cfg, &vc, e)) return 0;
    double C = vc.dim, H = vc.mlp_hidden, L = vc.depth, P = vc.patch;
    double NP = (double)(vc.img_size / vc.patch) * (vc.img_size / vc.patch), T = NP + 1;
    double vit = 3 * P * P * C + T * C + L * (4 * C * C + 2 * C * H + 9 * C + H);
    double B = cfg->data.global_batch, Bs = B / cfg->data.shards;
    const ser_objective_i *obj = ser_objective_get(cfg->method.name);
    double f[3] = {0, 0, 0};
    const char *hkey = "";
    if (obj && obj->memory) obj->memory(cfg, C, B, f, &hkey);
    double heads = f[0], theads = f[1], hact = f[2];
    double tvit = obj && obj->teacher_prefix ? vit : 0;
    double ser = cfg->ser.enabled ? 2 * C * cfg->ser.proj_dim : 0;
    // Student: parameters, gradients and two AdamW moments; the teacher's copy; one shard's
    // saved activations (two views; attention probabilities per head).
    double act = 2 * Bs * (L * T * (16 * C + 2 * H) + L * vc.heads * T * T);
    if (cfg->data.local_crops) {  // the local views' activations, at their own token count
        double ls = ser_config_local_size(cfg), Tl = (ls / P) * (ls / P) + 1;
        act += cfg->data.local_crops * Bs * (L * Tl * (16 * C + 2 * H) + L * vc.heads * Tl * Tl);
    }
    if (cfg->ser.enabled && cfg->ser.local_pairs) {  // two views per local SER pair of a shard's
        // equivariant samples (at most all of them), at up to scale_max times the local tokens
        double ls = ser_config_local_size(cfg), Tl = (ls / P) * (ls / P) * cfg->ser.scale_max + 1;
        double neq = fmin(Bs, ceil(cfg->ser.ratio * B));
        act += 2 * cfg->ser.local_pairs * neq * (L * Tl * (16 * C + 2 * H) + L * vc.heads * Tl * Tl);
    }
    double parts[4] = {4 * vit + tvit, 4 * (heads + ser) + theads + hact, act, 0};
    const char *names[3] = {"model (dim, depth, mlp_hidden, img_size / patch)", hkey,
                            "data.global_batch / data.shards (activations of one shard)"};
    if (cfg->ser.enabled && 4 * ser > 4 * heads) names[1] = "ser.proj_dim (projector_equiv)";
    int big = 0;
    for (int i = 1; i < 3; i++)
        if (parts[i] > parts[big]) big = i;
    if (largest && n) snprintf(largest, n, "%s", names[big]);
    return 4.0 * (parts[0] + parts[1] + parts[2]);
}

int ser_config_check_memory_here(const ser_config *cfg, char err[SER_ERR_LEN]) {
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? ser_config_check_memory(cfg, (double)pages * (double)psz, err)
                                : SER_OK;
}

int ser_config_check_memory(const ser_config *cfg, double avail_bytes, char err[SER_ERR_LEN]) {
    char largest[96];
    double need = ser_config_memory_bytes(cfg, largest, sizeof largest);
    if (need <= avail_bytes) return SER_OK;
    char hn[SER_HUMAN_BYTES_LEN], ha[SER_HUMAN_BYTES_LEN];
    s_err(err, "the job needs about %s of memory and this machine has %s; most of it is %s: "
          "make it smaller", ser_human_bytes(need, hn), ser_human_bytes(avail_bytes, ha), largest);
    return SER_ENOMEM;
}

int ser_config_validate(const ser_config *c, char err[SER_ERR_LEN]) {
#define RULE(cond, ...)                \
    do {                               \
        if (!(cond)) {                 \
            s_err(err, __VA_ARGS__);   \
            return SER_ECONFIG;        \
        }                              \
    } while (0)
    const ser_config_model *m = &c->model;
    RULE(m->img_size % m->patch == 0, "model.img_size = %d is not a multiple of model.patch = %d",
         m->img_size, m->patch);
    ser_vit_config vc;
    RULE(ser_vit_config_preset(&vc, s_arch[m->arch], m->img_size, m->patch) == SER_OK,
         "model.arch = %s: unknown", s_arch[m->arch]);
    if (m->depth) vc.depth = m->depth;
    RULE(m->cls_layer >= 1 && m->cls_layer <= vc.depth,
         "model.cls_layer = %d must be in [1, %d] (the depth of %s)", m->cls_layer, vc.depth,
         s_arch[m->arch]);
    RULE(!c->ser.enabled || m->cls_layer < vc.depth,
         "model.cls_layer = %d (= depth) is the baseline layout, which has no SER map: set "
         "ser.enabled = false or model.cls_layer < %d",
         m->cls_layer, vc.depth);
    char vit_err[SER_ERR_LEN];
    RULE(ser_config_to_vit(c, &vc, vit_err) == SER_OK, "model: %s", vit_err);
    RULE(c->ser.local_pairs == 0 || (c->method.name == SER_CONFIG_METHOD_MOCO && c->ser.enabled),
         "ser.local_pairs = %d: the 2+4-view SER is built for method.name = moco with "
         "ser.enabled = true", c->ser.local_pairs);
    if (c->ser.enabled && c->ser.local_pairs) {  // the pair NT-Xent holds 2N <= its bound
        double g0 = (double)m->img_size / m->patch;
        double N = ser_sched_equiv_count(c->ser.ratio, c->data.global_batch) * g0 * g0 *
                   c->ser.scale_max;
        RULE(2 * N <= SER_NTXENT_MAX_TOKENS,
             "ser.local_pairs = %d: the pair NT-Xent compares up to 2 x %.0f tokens of the global "
             "pair (equivariant samples x (model.img_size / model.patch)^2 x ser.scale_max), above "
             "its bound of %d: lower ser.ratio or the image size", c->ser.local_pairs, N,
             SER_NTXENT_MAX_TOKENS);
    }
    RULE(c->moco.addon_layer == 0 || ser_config_addon_pooled(c),
         "moco.addon_layer = %d: only a MoCo add-on (method.name = essl, augself, equimod or "
         "stl) reads it; method.name = %s", c->moco.addon_layer,
         ser_objective_names[c->method.name] ? ser_objective_names[c->method.name] : "?");
    RULE(c->moco.addon_layer == 0 ||
             (c->moco.addon_layer == m->cls_layer && m->cls_layer < vc.depth),
         "moco.addon_layer = %d: the pooled map is the block-k map of the SER layout, so it must "
         "be model.cls_layer (= %d) and model.cls_layer < the depth (%d)", c->moco.addon_layer,
         m->cls_layer, vc.depth);

    const ser_config_data *d = &c->data;
    RULE(d->global_batch % d->shards == 0,
         "data.global_batch = %d is not a multiple of data.shards = %d", d->global_batch,
         d->shards);
    RULE(d->blur_sigma == 0 || d->blur_sigma >= 0.1,
         "data.blur_sigma = %g: must be 0 (no blur) or at least 0.1", d->blur_sigma);
    RULE(d->local_crop_min <= d->local_crop_max,
         "data.local_crop_min = %g must be <= data.local_crop_max = %g", d->local_crop_min,
         d->local_crop_max);
    RULE(d->local_mode != SER_CONFIG_LOCAL_CENTER || d->local_crops == 1,
         "data.local_mode = center needs data.local_crops = 1, not %d", d->local_crops);
    RULE(d->local_mode != SER_CONFIG_LOCAL_ROTATIONS || d->local_crops == 4,
         "data.local_mode = rotations needs data.local_crops = 4 (one per rotation), not %d",
         d->local_crops);
    RULE(c->method.name != SER_CONFIG_METHOD_ESSL ||
             (d->local_crops == 4 && d->local_mode == SER_CONFIG_LOCAL_ROTATIONS),
         "method.name = essl predicts the rotation of 4 rotated crops: set data.local_crops = 4 "
         "and data.local_mode = rotations (data.local_size and data.local_crop_min/max size "
         "them; the reference: 96 px, scale 0.05-0.14)");
    RULE(c->method.name != SER_CONFIG_METHOD_EQUIMOD ||
             (d->local_crops == 1 && d->local_mode == SER_CONFIG_LOCAL_CENTER &&
              ser_config_local_size(c) == m->img_size),
         "method.name = equimod reads the unaugmented centre view x_0 as local view 0: set "
         "data.local_crops = 1, data.local_mode = center and data.local_size = model.img_size "
         "(= %d; now local_crops %d, local_size %d)", m->img_size, d->local_crops,
         ser_config_local_size(c));
    RULE(c->method.name != SER_CONFIG_METHOD_STL ||
             (d->global_batch % 2 == 0 && d->global_batch % d->shards == 0 &&
              d->global_batch / d->shards % 2 == 0),
         "method.name = stl pairs the batch positions 2k and 2k+1 within a shard: "
         "data.global_batch (= %d) and its shard size data.global_batch / data.shards (= %d / %d) "
         "must be even", d->global_batch, d->global_batch, d->shards);
    RULE(d->local_size % m->patch == 0, "data.local_size = %d is not a multiple of model.patch = %d",
         d->local_size, m->patch);
    RULE(d->kind != SER_CONFIG_DATA_SYNTHETIC || d->synthetic_images >= d->global_batch,
         "data.synthetic_images = %d is smaller than data.global_batch = %d (no full batch)",
         d->synthetic_images, d->global_batch);

    const ser_config_optim *o = &c->optim;
    RULE(o->warmup_epochs < o->epochs, "optim.warmup_epochs = %d must be < optim.epochs = %d",
         o->warmup_epochs, o->epochs);

    const ser_config_ser *s = &c->ser;
    if (s->enabled) {
        RULE(s->warmup_epochs + s->rest_epochs < o->epochs,
             "ser.warmup_epochs + ser.rest_epochs = %d must be < optim.epochs = %d",
             s->warmup_epochs + s->rest_epochs, o->epochs);
        int neq = ser_sched_equiv_count(s->ratio, d->global_batch);
        RULE(neq > 0,
             "ser.ratio = %g gives round(%g * %d) = 0 equivariant samples in the global batch "
             "(data.global_batch = %d): raise ser.ratio or the batch, or set ser.enabled = false",
             s->ratio, s->ratio, d->global_batch, d->global_batch);
    }
    RULE(s->scale_min <= s->scale_max, "ser.scale_min = %g must be <= ser.scale_max = %g",
         s->scale_min, s->scale_max);
    RULE(s->aspect_min <= s->aspect_max, "ser.aspect_min = %g must be <= ser.aspect_max = %g",
         s->aspect_min, s->aspect_max);

    const ser_objective_i *obj = ser_objective_get(c->method.name);
    RULE(d->local_crops == 0 || (obj && obj->local_views),
         "data.local_crops = %d: method.name = %s has no use for local views (dino and moco do)",
         d->local_crops, obj ? obj->name : "?");
    if (obj && obj->check) {
        char e2[SER_ERR_LEN];
        RULE(obj->check(c, e2) == SER_OK, "%s", e2);
    }

    const ser_config_cluster *k = &c->cluster;
    RULE(k->heartbeat_ms < k->timeout_ms,
         "cluster.heartbeat_ms = %d must be < cluster.timeout_ms = %d", k->heartbeat_ms,
         k->timeout_ms);
    RULE(k->port == 0 || k->port != k->data_port,
         "cluster.port and cluster.data_port are both %d", k->port);
    RULE(k->status_port <= 0 || (k->status_port != k->port && k->status_port != k->data_port),
         "cluster.status_port = %d is also the control or data port", k->status_port);
#undef RULE
    return SER_OK;
}

// --- output ------------------------------------------------------------------------------------
int ser_config_get(const ser_config *cfg, const char *key, char *buf, size_t n) {
    const ser_config_option *o = s_find_key(key);
    if (!o) {
        if (n) buf[0] = 0;
        return SER_ENOENT;
    }
    s_format(cfg, o, buf, n);
    return SER_OK;
}

char *ser_config_text(const ser_config *cfg) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    int rc = ser_config_dump(cfg, f);
    if (fclose(f) != 0 || rc != SER_OK) {
        free(buf);
        return NULL;
    }
    return buf;
}

int ser_config_dump(const ser_config *cfg, FILE *f) {
    char hex[17], val[SER_CONFIG_STR_LEN + 32];
    fprintf(f, "; ser job configuration: every key (ser_config_dump); see docs/config.md.\n");
    fprintf(f, "; config hash %s\n", ser_config_hash_hex(cfg, hex));
    const char *sec = "";
    for (int i = 0; i < N_OPTIONS; i++) {
        const ser_config_option *o = &s_options[i];
        if (strcmp(sec, o->section) != 0) {
            sec = o->section;
            fprintf(f, "\n[%s]\n", sec);
        }
        s_format(cfg, o, val, sizeof val);
        fprintf(f, "%s = %s\n", o->name, val);
    }
    return ferror(f) ? SER_EIO : SER_OK;
}

int ser_config_diff(const ser_config *a, const ser_config *b, char *buf, size_t n) {
    char va[SER_CONFIG_STR_LEN + 32], vb[SER_CONFIG_STR_LEN + 32];
    for (int i = 0; i < N_OPTIONS; i++) {
        const ser_config_option *o = &s_options[i];
        s_format(a, o, va, sizeof va);
        s_format(b, o, vb, sizeof vb);
        // Doubles: the shortest round-trip text is equal iff the values are (NaN excluded).
        if (strcmp(va, vb) != 0) {
            if (buf && n) snprintf(buf, n, "%s.%s: %s != %s", o->section, o->name, va, vb);
            return 1;
        }
    }
    if (buf && n) buf[0] = 0;
    return 0;
}

int ser_config_equal(const ser_config *a, const ser_config *b) {
    return !ser_config_diff(a, b, NULL, 0);
}

static int s_is_method_section(const char *section) {
    for (int i = 0; ser_objective_names[i]; i++)
        if (strcmp(section, ser_objective_names[i]) == 0) return 1;
    return 0;
}

// The defaults, made once (the hash compares HASH_IF_SET options with them).
static ser_config s_default_cfg;
static pthread_once_t s_default_once = PTHREAD_ONCE_INIT;
static void s_make_defaults(void) { ser_config_defaults(&s_default_cfg); }
static const ser_config *s_defaults(void) {
    pthread_once(&s_default_once, s_make_defaults);
    return &s_default_cfg;
}

uint64_t ser_config_hash(const ser_config *cfg) {
    uint64_t h = 0xcbf29ce484222325ull;
    char line[SER_CONFIG_STR_LEN + 128];
#define FNV(str)                                              \
    for (const unsigned char *q = (const unsigned char *)(str); *q; q++) \
    h = (h ^ *q) * 0x100000001b3ull
    FNV("ser-config-v1\n");
    const char *method = ser_objective_names[cfg->method.name];
    const ser_objective_i *obj = ser_objective_get(cfg->method.name);
    const char *base = obj && obj->base_section ? obj->base_section : "";
    for (int i = 0; i < N_OPTIONS; i++) {
        const ser_config_option *o = &s_options[i];
        if (o->flags & SER_CONFIG_F_NOHASH) continue;
        // The sections of the methods that are not selected cannot change results (E-SSL reads
        // [moco] as well as its own: its base_section).
        if (s_is_method_section(o->section) && strcmp(o->section, method) != 0 &&
            strcmp(o->section, base) != 0)
            continue;
        char val[SER_CONFIG_STR_LEN + 32];
        s_format(cfg, o, val, sizeof val);
        if (o->flags & SER_CONFIG_F_HASH_IF_SET) {
            char def[SER_CONFIG_STR_LEN + 32];
            s_format(s_defaults(), o, def, sizeof def);
            if (strcmp(val, def) == 0) continue;
        }
        snprintf(line, sizeof line, "%s.%s=%s\n", o->section, o->name, val);
        FNV(line);
    }
#undef FNV
    return h;
}

const char *ser_config_hash_hex(const ser_config *cfg, char out[17]) {
    snprintf(out, 17, "%016llx", (unsigned long long)ser_config_hash(cfg));
    return out;
}

static const char *s_type_name(const ser_config_option *o) {
    switch (o->type) {
    case SER_CONFIG_INT: return "int";
    case SER_CONFIG_I64: return "int64";
    case SER_CONFIG_DOUBLE: return "float";
    case SER_CONFIG_BOOL: return "bool";
    case SER_CONFIG_ENUM: return "enum";
    case SER_CONFIG_STRING: return "string";
    }
    return "?";
}

int ser_config_write_markdown(FILE *f) {
    fputs("# Job configuration\n\n"
            "<!-- Generated by ser_config_write_markdown() (common/io/ser_config.c) from the option "
            "table.\n"
            "     Do not edit: regenerate with `SER_UPDATE_DOCS=1 build/tests/test_config`. -->\n\n"
            "A job is described by one INI file: `[section]` headers and `key = value` lines. "
            "Comments are lines\n"
            "starting with `;` or `#`, or the rest of a line after ` ;`. Every key has a "
            "default, so a file only\n"
            "lists what differs; `configs/` holds presets (the paper's three ImageNet runs, as its "
            "public code's\n"
            "`run_pretrain.sh` sets them, and small CPU runs). Overrides come after the file, in order: "
            "`--set optim.lr=1e-4`.\n\n"
            "Loading is all or nothing. A bad file names the file, the line, the key and what "
            "is allowed, and\n"
            "nothing starts:\n\n"
            "```\n"
            "job.ini:12: optim.lr = -1: must be in [0, 10]\n"
            "job.ini:3: method.name = simclr: must be one of moco, dino, barlow\n"
            "job.ini:7: optim.epochs = 10x: not an integer (allowed: [1, 100000])\n"
            "job.ini:9: optim.learning_rate: unknown key in [optim] (keys: lr, min_lr, ...)\n"
            "job.ini: data.global_batch = 1000 is not a multiple of data.shards = 16\n"
            "```\n\n"
            "Unknown sections and keys, keys given twice, values out of range, malformed "
            "numbers and unknown\n"
            "enum values are errors; so are the cross-field rules: `img_size % patch == 0`, "
            "`cls_layer` in\n"
            "[1, depth] and < depth when SER is on, `global_batch % shards == 0`, "
            "`warmup_epochs < epochs`,\n"
            "`ser.warmup_epochs + ser.rest_epochs < epochs`, at least one equivariant sample "
            "per batch when SER\n"
            "is on, `scale_min <= scale_max`, `aspect_min <= aspect_max`, DINO's warmups within "
            "the run,\n"
            "`heartbeat_ms < timeout_ms` and distinct ports. Lines are at most 197 characters "
            "(inih's buffer),\n"
            "strings at most 160.\n\n"
            "Decisions worth knowing:\n\n"
            "- **The SER layer is `model.cls_layer`.** The SER map is taken after the block "
            "where [CLS] is\n"
            "  inserted (as in the paper's public code, which uses one flag "
            "(`--equiv-layer`) for both).\n"
            "- **`ser.ratio` applies to the global batch**: `round(ratio * global_batch)` "
            "equivariant samples,\n"
            "  ties to even, at the last positions of the global batch (0.01 of 2048 = 20). "
            "The reference applies\n"
            "  it per GPU (0.01 of 256 = 3 per GPU, 24 of 2048 on 8 GPUs).\n"
            "- **The learning rate** is `optim.lr` per 256 images; the peak is "
            "`lr * global_batch / 256`, and\n"
            "  `optim.lr_schedule = auto` uses the method's schedule (common/train/ser_sched.h).\n"
            "- **AdamW betas** are two keys, `optim.beta1` and `optim.beta2`.\n"
            "- **The config hash** (handshake, checkpoints) is FNV-1a 64 over `ser-config-v1` "
            "and the canonical\n"
            "  `section.key=value` lines of every key marked *yes* in the column *hashed*, in "
            "table order,\n"
            "  except the sections of the methods not selected (`[dino]` in a MoCo job). Keys "
            "that cannot\n"
            "  change the numbers (paths, loader threads, logging, checkpoint cadence, "
            "`run.max_steps`, `[eval]`, `[cluster]`)\n"
            "  are left out, so a job can move or resume with a longer step limit. Keys marked "
            "*when set*\n"
            "  came later: they are hashed only away from their default, so jobs that do not use "
            "them keep\n"
            "  the hash (and their checkpoints) of the binaries before them.\n"
            "- **The length of a run.** An epoch of the schedules is `data.iters_per_epoch` steps, "
            "by default\n"
            "  ceil(train images / `data.global_batch`), counted by the coordinator at start and "
            "kept in\n"
            "  checkpoints. A job trains `optim.epochs` epochs unless `--steps` or `run.max_steps` "
            "stops it\n"
            "  earlier (a warning says where the schedule would end); it never runs past the "
            "schedule.\n"
            "- `ser_config_dump()` writes every key in canonical form; loading the dump gives "
            "the same\n"
            "  configuration and hash.\n",
          f);
    const char *sec = "";
    char def[SER_CONFIG_STR_LEN + 32], allowed[SER_ERR_LEN];
    for (int i = 0; i < N_OPTIONS; i++) {
        const ser_config_option *o = &s_options[i];
        if (strcmp(sec, o->section) != 0) {
            sec = o->section;
            fprintf(f, "\n## [%s]\n\n", sec);
            fprintf(f, "| key | type | default | allowed | hashed | meaning |\n");
            fprintf(f, "|---|---|---|---|---|---|\n");
        }
        allowed[0] = 0;
        switch (o->type) {
        case SER_CONFIG_INT:
        case SER_CONFIG_I64:
        case SER_CONFIG_DOUBLE: s_range(o, allowed, sizeof allowed); break;
        case SER_CONFIG_BOOL: snprintf(allowed, sizeof allowed, "true, false"); break;
        case SER_CONFIG_ENUM:
            for (int k = 0; o->choices[k]; k++)
                s_cat(allowed, sizeof allowed, "%s`%s`", k ? ", " : "", o->choices[k]);
            break;
        case SER_CONFIG_STRING:
            snprintf(allowed, sizeof allowed, "up to %d characters", SER_CONFIG_STR_LEN - 1);
            break;
        }
        ser_config c;
        ser_config_defaults(&c);
        s_format(&c, o, def, sizeof def);
        fprintf(f, "| `%s` | %s | `%s` | %s | %s | %s |\n", o->name, s_type_name(o),
                def[0] ? def : "\"\"", allowed,
                (o->flags & SER_CONFIG_F_NOHASH)     ? "no"
                : (o->flags & SER_CONFIG_F_HASH_IF_SET) ? "when set"
                                                      : "yes",
                o->help);
    }
    return ferror(f) ? SER_EIO : SER_OK;
}

// --- what the modules need -----------------------------------------------------------------------
void ser_config_to_optim(const ser_config *cfg, ser_optim_config *out) {
    ser_optim_config_default(out);
    out->beta1 = cfg->optim.beta1;
    out->beta2 = cfg->optim.beta2;
    out->eps = cfg->optim.eps;
    out->decay = cfg->optim.decay == SER_CONFIG_DECAY_NO_BIAS_1D ? SER_OPTIM_DECAY_NO_BIAS_1D
                                                                 : SER_OPTIM_DECAY_ALL;
}

int ser_config_shard_batch(const ser_config *cfg) {
    return cfg->data.global_batch / cfg->data.shards;
}

void ser_config_to_sched(const ser_config *cfg, int64_t iters_per_epoch, ser_sched_params *out) {
    memset(out, 0, sizeof *out);
    const ser_objective_i *obj = ser_objective_get(cfg->method.name);
    out->lr_kind = SER_SCHED_MOCO;
    out->momentum_kind = SER_SCHED_BARLOW;  // no teacher
    if (obj && obj->sched) obj->sched(cfg, out);  // the method's: lr kind, teacher schedules
    int lrs = cfg->optim.lr_schedule;
    if (lrs != SER_CONFIG_LRS_AUTO)
        out->lr_kind = lrs == SER_CONFIG_LRS_DINO     ? SER_SCHED_DINO
                       : lrs == SER_CONFIG_LRS_BARLOW ? SER_SCHED_BARLOW
                                                      : SER_SCHED_MOCO;
    out->iters_per_epoch = iters_per_epoch;
    out->epochs = cfg->optim.epochs;
    out->warmup_epochs = cfg->optim.warmup_epochs;
    out->global_batch = cfg->data.global_batch;
    out->base_lr = cfg->optim.lr;
    out->min_lr = cfg->optim.min_lr;
    out->wd = cfg->optim.weight_decay;
    out->wd_end = cfg->optim.weight_decay_end;
    out->ser_batch = cfg->data.global_batch;
    if (cfg->ser.enabled) {
        out->ser_ratio = cfg->ser.ratio;
        out->ser_warmup_epochs = cfg->ser.warmup_epochs;
        out->ser_rest_epochs = cfg->ser.rest_epochs;
    }
}
