// ser_dl.h — the in-process data pipeline: deterministic shards of augmented view pairs.
//
// Batch geometry. A job has a global batch B split into S shards (B % S == 0). Shard s of
// step t holds global positions p in [s*B/S, (s+1)*B/S). The sample at position p of step t is
// q = t*B + p in the endless stream of epochs: epoch e = q / N, dataset index
// perm_e[q mod N], where perm_e = ser_rng_permutation(N, seed, e). The equivariant sub-batch
// is the LAST n_eq = round_half_even(eq_ratio * B) positions of the global batch.
//
// Samples. Invariant: two views of img x img, each its own RandomResizedCrop + hflip +
// photometric draw (view 0: blur p 1.0, solarize p 0; view 1: blur p 0.1, solarize p 0.2).
// Local views (local_crops > 0, every sample, invariant or not): view 2 + k is its own
// RandomResizedCrop with scale (local_crop_min, local_crop_max) of the decoded image, resized
// to local_size x local_size, + hflip + the photometric draw of view 2 + k (blur p 0.5, no
// solarize: DINO's local-crop policy). With local_rotations (E-SSL; local_crops = 4): one such
// crop (view 2's draws), and local view k is it rotated k x 90 degrees counter-clockwise
// (torch.rot90(x, k, (H, W))): out[i][j] = in[j][S-1-i] per quarter turn. With local_center
// (EquiMod's x_0; local_crops = 1): local view 0 is the image resized so that its shorter side
// is round(local_size * 256 / 224), then centre-cropped to local_size (torchvision Resize(256)
// + CenterCrop(224)), without augmentation.
// Aligned pairs (STL's aligned transform: RandomResizedCrop + colour jitter + grayscale replayed
// on the odd sample, flip and blur independent): the sample at an odd shard position takes the
// global views' crop draws (scale and ratio; for an equivariant sample its one crop) and their
// colour jitter and grayscale draws from the sample before it, i.e. from that sample's keys
// (epoch, index); its flips, blur, solarize, group elements and local views stay its own. Images
// of one size get the same crop box; of other sizes the box drawn with the same stream for their
// size.
// Local SER pairs (local_pairs = P, ser.local_pairs): an equivariant sample also has P pairs of
// views; pair k is one RandomResizedCrop (scale local_crop_min..max, + hflip) to local_size of
// its own draws (view id 2 + SER_MAX_LOCAL + 2k), then per view w the photometric draw of view
// id 2 + SER_MAX_LOCAL + 2k + w (the local-crop policy) and the group element lg[k][w] on the
// local grid (local_size / patch), drawn as g0, g1 are from the seed offset by
// (SER_MAX_LOCAL + 1 + k) x 0x9E3779B97F4A7C15, applied as for the global pair.
// Every sample records the parameters its two global views were made with (vparams,
// SER_VIEW_PARAMS floats per view: ser_engine.h).
// Equivariant: one crop (view 0's crop + flip) resized to img x img, then per view v the
// photometric draw of view v, then the group element g_v (ser_group_elem of common/nn/ser_group.h,
// the type the worker's objective consumes) applied in float by ser_group_image_action_hwc,
// then rounding to uint8: a view of ser_group_image_size(g_v, P), i.e. (P*gh, P*gw),
// transposed when rot90 is odd.
//
// Randomness (design.md §4). Every per-sample draw comes from
// ser_rng_init(seed, epoch, dataset index, view<<16 | purpose): the dataset index, not the
// position, so an image's augmentation in an epoch does not depend on B, S, the process or
// the thread; (epoch, index) is unique since an epoch visits each index once. A bad file's
// replacement keeps the draws of the original index. Per-shard draws come from
// ser_rng_init(seed, step, shard, 1<<31 | view<<16 | purpose) (kornia's op order), or from
// the group sampler's shard streams below.
//
// Group elements come from common/nn/ser_group.h's samplers (one definition of G and of its
// distribution), the loader's keys passed through their counter words:
//   paper      ser_group_sample_paper(seed, step := epoch, sample_id := dataset index):
//              g_v from (seed, epoch, index, v<<16 | GROUP), v = 0, 1.
//   reference  ser_group_sample_reference_keyed(seed, shard_key := (step, shard),
//              sample_key := (epoch, index)): (gh, gw, rot90) of view v from
//              (seed, step, shard, (SER_GROUP_TAG_SHARED+v)<<16 | GROUP), view 0's rot180 and
//              hflip from (seed, epoch, index, SER_GROUP_TAG_FLAGS<<16 | GROUP), view 1's
//              their NOT.
// The plain ser_group_sample_reference keys both kinds of draw by one word (its step), so it
// cannot key the geometry by step and the flags by epoch; the keyed form can. The tags in
// bits 16.. (0, 1: paper, per sample; 2, 3: per shard; 4: flags, per sample) keep the GROUP
// streams apart where (step, shard) equals some (epoch, index). The scale range is the group's
// SER_GROUP_SCALE_MIN/MAX (0.7, 1.3).
//
// The content of shard (t, s) is a pure function of (config, t, s): each sample is made by
// one thread from its own inputs, threads only split the samples.
//
// defines:
//   ser_dl_config, ser_dl_config_defaults(), ser_dl_config_hash(), ser_dl_config_check(),
//   ser_dl_config_from_job()
//   ser_dl_sample, ser_dl_shard, ser_dl_shard_free()
//   ser_dl (opaque), ser_dl_new(), ser_dl_destroy(), ser_dl_make_shard()
//   ser_dl_num_eq(), ser_dl_shard_size(), ser_dl_count(), ser_dl_config_of()
//   ser_dl_bad_files(), ser_dl_replacements(), ser_dl_bad_report()
#ifndef SER_DL_H
#define SER_DL_H

#include <stddef.h>
#include <stdint.h>

#include "ser_dl_data.h"
#include "ser_dl_ops.h"
#include "ser_engine.h"
#include "ser_group.h"

enum ser_dl_group_sampling {
    SER_DL_GROUP_PAPER = 0,      // g0, g1 independent per sample, every field
    SER_DL_GROUP_REFERENCE = 1,  // ser-reference.md §3.3: scale/aspect/rot90 per shard and
                                 // view; view 1's rot180/hflip = NOT view 0's
};

typedef struct ser_dl_config {
    char data[1024];      // dataset root ("" for synthetic data)
    int kind;             // enum ser_dl_kind
    uint32_t synthetic_images;  // kind SER_DL_KIND_SYNTHETIC: images of the dataset
    int split;            // enum ser_dl_split
    char cache_dir[1024]; // index cache folder; "" = none
    char job_id[64];
    int img;              // view size (invariant views, equivariant crop); 224
    int patch;            // patch size P; 16 (at most SER_GROUP_MAX_PATCH)
    int global_batch;     // B; 256
    int shards;           // S; 1
    double eq_ratio;      // 0.01
    uint64_t seed;        // 0
    int policy;           // enum ser_dl_policy; torchvision
    int group_sampling;   // enum ser_dl_group_sampling; paper
    int interp;           // enum ser_dl_interp; bilinear (MoCo); bicubic for DINO/BT
    double crop_min;      // RandomResizedCrop scale (crop_min, 1); 0.08
    int local_crops;      // local views per sample, 0..SER_MAX_LOCAL; 0
    int local_size;       // their side (a multiple of patch); 96
    double local_crop_min, local_crop_max;  // their RandomResizedCrop scale; (0.05, 0.4)
    int local_rotations;  // 1: local view k = local view 0 rotated k x 90 degrees (E-SSL)
    int local_center;     // 1: local view 0 = the centre crop, unaugmented (EquiMod's x_0)
    int aligned_pairs;    // 1: positions 2k, 2k+1 share their views' crop and colour draws (STL)
    int local_pairs;      // local SER pairs per equivariant sample (ser.local_pairs); 0
    int photometric;      // 1; 0 leaves out jitter/gray/blur/solarize (tests, previews)
    ser_dl_photo_strength strength;  // ser_dl_photo_moco
    int threads;          // decode/augment threads; 0 = all online cores
    double max_bad_fraction;  // bad-file budget (ser_dl_data_set_max_bad); 0.01. Not hashed:
                              // it changes no shard, only when the loader gives up
} ser_dl_config;

void ser_dl_config_defaults(ser_dl_config *c);
// The loader configuration of a job ([data], [model] img_size/patch, [ser] ratio/sampling,
// run.name as the job id): every process of a job derives the same loader config, and hash.
struct ser_config;
void ser_dl_config_from_job(ser_dl_config *c, const struct ser_config *job);
// Returns SER_OK or SER_ECONFIG with a reason in err.
int ser_dl_config_check(const ser_dl_config *c, char err[256]);
// FNV-1a over every field that changes shard content (not paths, cache or threads), and a
// version tag that changes with the content's definition.
uint64_t ser_dl_config_hash(const ser_dl_config *c);

typedef struct ser_dl_sample {
    uint64_t position;   // global position p in the step's batch
    uint32_t index;      // dataset index (keys the draws)
    uint32_t source;     // index actually decoded (!= index when the file was bad)
    int32_t label;       // label of `source`
    int equivariant;
    ser_group_elem g[2]; // equivariant only
    int h[2], w[2];      // each view's size
    uint8_t *view[2];    // (h, w, 3) uint8, pointing into the shard's data
    uint8_t *local[SER_MAX_LOCAL];  // (local_size, local_size, 3) local views, likewise
    float vparams[2][SER_VIEW_PARAMS];  // each global view's parameters (ser_engine.h)
    // Equivariant only, local_pairs of them: pair k's views (lh, lw, 3) and group elements.
    ser_group_elem lg[SER_MAX_LOCAL_PAIRS][2];
    int lh[SER_MAX_LOCAL_PAIRS][2], lw[SER_MAX_LOCAL_PAIRS][2];
    uint8_t *lview[SER_MAX_LOCAL_PAIRS][2];
} ser_dl_sample;

typedef struct ser_dl_shard {
    uint64_t step;
    uint32_t shard;
    int n;                  // samples
    int n_local, local_size;  // local views per sample and their side (0, 0: none)
    int local_pairs;          // local SER pairs per equivariant sample
    ser_dl_sample *samples;
    uint8_t *data;          // all views, sample-major, view 0, view 1, local views, pair views
    size_t nbytes;
} ser_dl_shard;

// Releases the internals; safe on a zeroed struct.
void ser_dl_shard_free(ser_dl_shard *s);

// A shard from another process (a loader's reply) against the job: every equivariant view and
// local SER pair view has the size its group element gives at this patch (the ViT reads
// rows x patch by cols x patch of it) and a token grid of at most grid_max a side. SER_OK, or
// SER_ESHAPE with the sample and view named in err.
int ser_dl_shard_check(const ser_dl_shard *d, int patch, int grid_max, char err[256]);

typedef struct ser_dl ser_dl;

// Opens the dataset and starts the thread pool. NULL with a reason in err on failure
// (bad config, missing or unreadable dataset root).
ser_dl *ser_dl_new(const ser_dl_config *cfg, char err[256]);
void ser_dl_destroy(ser_dl **dlp);

// Fills *out (caller frees with ser_dl_shard_free). Not reentrant: one call at a time per dl.
// Returns SER_OK, SER_EINVAL (shard out of range) or SER_EFORMAT (nothing decodable, or more
// bad files than the budget: ser_dl_bad_report says which).
int ser_dl_make_shard(ser_dl *dl, uint64_t step, uint32_t shard, ser_dl_shard *out);
// ser_dl_data_bad_report() of the dataset.
int ser_dl_bad_report(const ser_dl *dl, char *buf, size_t n);

int ser_dl_num_eq(const ser_dl *dl);
int ser_dl_shard_size(const ser_dl *dl);
uint32_t ser_dl_count(const ser_dl *dl);
const ser_dl_config *ser_dl_config_of(const ser_dl *dl);
int ser_dl_threads(const ser_dl *dl);
uint64_t ser_dl_bad_files(const ser_dl *dl);
uint64_t ser_dl_replacements(const ser_dl *dl);

#endif
