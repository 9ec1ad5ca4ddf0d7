// ser_dl_data.h — datasets for the loader: an index of samples, and decoding one sample to RGB.
//
// Three kinds of dataset, each with a train and a val split:
//   ImageFolder  ROOT/{train,val}/<class>/<file>.jpg (the ImageNet layout; if ROOT has no
//                train/ folder, ROOT itself is the train split; the validation split is val/,
//                else test/, and the folder used is logged). Classes are the sorted folder
//                names, files are sorted by name within a class (torchvision's order). JPEG and
//                PNG files are indexed (.jpg/.jpeg/.jpe/.jfif/.png, any case; the decoder is
//                chosen by the file's signature, as PIL does); other image files are counted
//                and skipped with one warning. Grayscale and CMYK JPEGs, and grey, grey+alpha,
//                RGBA, palette and 16-bit PNGs, are converted to RGB the way PIL's
//                convert("RGB") does. Links are followed, but
//                each folder (device, inode) is walked once, so links to "." or a parent end;
//                a JPEG name that is no regular file (FIFO, device, socket, dangling link) is
//                skipped with a warning. More than 16 folder levels below a class folder or
//                10 million folder entries in all fail the open with a message.
//   CIFAR-10     the binary version: ROOT/data_batch_{1..5}.bin (train), ROOT/test_batch.bin
//                (val); records of 1 label byte + 3072 bytes (R, G, B planes of 32x32).
//   Fashion-MNIST  gzipped IDX: ROOT/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz; 28x28
//                grayscale, replicated to RGB.
//   synthetic    no files (data.kind = synthetic): N generated 32x32 RGB images in 10 classes
//                (label = index mod 10), each a pure function of (split, index): a class-tied
//                stripe pattern with a per-image phase, frequency and tint (ser_dl_data_open_synthetic).
//
// The ImageFolder index (relative paths, labels, file sizes) is built once and cached in a
// versioned binary file under cfg->cache_dir, keyed by the root's real path and split, and
// revalidated by the modification times of the class folders. CIFAR-10 and Fashion-MNIST are
// small enough to be read whole into memory at open.
//
// Bad input: a file that is empty, truncated, corrupt, neither JPEG nor PNG, over 64 MiB, or no
// longer a regular file when read (it is opened non-blocking and checked with fstat first) is
// logged once with its path, counted, and replaced by the first good index in the fixed probe
// sequence idx+1, idx+2, ... (mod N). Which file is good depends on its bytes alone (the
// decoder is reset after every failure), so the replacement depends on the index only, never
// on the order of loads. A budget (ser_dl_data_set_max_bad: data.max_bad_fraction of the files,
// at least SER_DL_BAD_FILES_FREE) bounds this: past it every load fails, and
// ser_dl_data_bad_report() names the count and the first bad files for the message that stops
// the job. A missing or unreadable root is an error at open.
//
// defines:
//   ser_dl_data (opaque), ser_dl_data_open(), ser_dl_data_open_synthetic(), ser_dl_data_destroy()
//   ser_dl_data_count(), ser_dl_data_label(), ser_dl_data_path(), ser_dl_data_classes()
//   ser_dl_data_load(): decode one sample (with replacement of bad files) to RGB HWC uint8
//   ser_dl_data_bad_files(), ser_dl_data_replacements(): counters
//   ser_dl_data_set_max_bad(), ser_dl_data_bad_report(): the bad-file budget
//   ser_dl_data_dir(): the split folder read
//   ser_dl_image, ser_dl_image_free()
//   ser_dl_decode_image(): JPEG or PNG by the signature
//   ser_dl_decode_jpeg(), ser_dl_decode_png(): the decoders on their own (TurboJPEG, libpng)
//   ser_dl_encode_jpeg(), ser_dl_data_make_synthetic(): JPEG writing, synthetic trees for
//   tests, previews and benchmarks
#ifndef SER_DL_DATA_H
#define SER_DL_DATA_H

#include <stddef.h>
#include <stdint.h>

enum ser_dl_kind {
    SER_DL_KIND_AUTO = 0,  // CIFAR-10 if data_batch_1.bin exists, F-MNIST if its files
                           // exist, else ImageFolder
    SER_DL_KIND_IMAGEFOLDER = 1,
    SER_DL_KIND_CIFAR10 = 2,
    SER_DL_KIND_FMNIST = 3,
    SER_DL_KIND_SYNTHETIC = 4,  // generated images, no files (ser_dl_data_open_synthetic)
};

// Side of the synthetic dataset's images.
#define SER_DL_SYNTHETIC_SIDE 32

enum ser_dl_split { SER_DL_SPLIT_TRAIN = 0, SER_DL_SPLIT_VAL = 1 };

// Bad files always tolerated, whatever the fraction (a small dataset with a few bad files).
#define SER_DL_BAD_FILES_FREE 10

// An RGB image, rows of w*3 bytes (HWC), owned by the struct.
typedef struct ser_dl_image {
    int w, h;
    uint8_t *px;
} ser_dl_image;

void ser_dl_image_free(ser_dl_image *im);

typedef struct ser_dl_data ser_dl_data;

// Opens a dataset. cache_dir may be NULL (no index cache); it is created if missing.
// Returns NULL on failure with a message in err (a missing root, no images, bad files).
ser_dl_data *ser_dl_data_open(const char *root, int kind, int split, const char *cache_dir,
                              char err[256]);
// The synthetic dataset of n images (n >= 1; kind SER_DL_KIND_SYNTHETIC): no files, nothing
// held in memory; every load generates its image. NULL with a reason in err for n == 0.
ser_dl_data *ser_dl_data_open_synthetic(uint32_t n, int split, char err[256]);
void ser_dl_data_destroy(ser_dl_data **dp);

uint32_t ser_dl_data_count(const ser_dl_data *d);
int ser_dl_data_kind(const ser_dl_data *d);
int ser_dl_data_label(const ser_dl_data *d, uint32_t idx);
int ser_dl_data_num_classes(const ser_dl_data *d);
// ImageFolder: the file's path (relative to the split folder); others: a synthetic name.
// Writes into buf and returns it.
const char *ser_dl_data_path(const ser_dl_data *d, uint32_t idx, char *buf, size_t n);
// 1 if the index was loaded from the cache file (ImageFolder only).
int ser_dl_data_index_from_cache(const ser_dl_data *d);

// Decodes sample idx into *out (RGB). If the file is bad it is logged (once per file and
// process), counted, and the first good index of idx+1, idx+2, ... is decoded instead;
// *source receives the index actually decoded (may be NULL). Thread-safe; tj is as for
// ser_dl_decode_jpeg(): &the calling thread's handle, or NULL.
// Returns SER_OK, SER_ENOMEM, or SER_EFORMAT if no sample of the dataset can be decoded.
int ser_dl_data_load(ser_dl_data *d, uint32_t idx, void **tj, ser_dl_image *out,
                     uint32_t *source);

// Distinct bad files seen by this process, and loads that needed a replacement.
uint64_t ser_dl_data_bad_files(const ser_dl_data *d);
uint64_t ser_dl_data_replacements(const ser_dl_data *d);

// The bad-file budget: once more than max(SER_DL_BAD_FILES_FREE, floor(fraction * count)) files
// are found bad, every ser_dl_data_load fails with SER_EFORMAT. None until set. Call it before
// loads start (not thread-safe against them).
void ser_dl_data_set_max_bad(ser_dl_data *d, double fraction);
// Writes into buf what is known of the bad files: "12 of 16 files cannot be decoded, more than
// data.max_bad_fraction = 0.01 allows (10): c00/a.jpg, c00/b.jpg, ... in /data/train (c00/a.jpg:
// not a JPEG or PNG file (14 bytes))" (or "none of the 16 files can be decoded: ..."): the first
// few named, then the first one's reason. Only bad files of an ImageFolder are ever named (the
// in-memory datasets have none). Returns SER_EFORMAT when the budget is passed or no file
// decodes, else SER_OK.
int ser_dl_data_bad_report(const ser_dl_data *d, char *buf, size_t n);
// The folder of the split (ImageFolder: ROOT/train, ROOT, ROOT/val or ROOT/test; "" others).
const char *ser_dl_data_dir(const ser_dl_data *d);

// Decodes a JPEG held in memory to RGB with TurboJPEG (accurate DCT, fancy upsampling, as
// PIL's decoder). Grayscale is replicated; CMYK/YCCK is converted as PIL does (Adobe
// inverted CMYK, then cmyk2rgb). Truncated data is an error (as PIL without
// LOAD_TRUNCATED_IMAGES). tj points at the caller's TurboJPEG decompressor (a tjhandle; made
// here if *tj is NULL), or is NULL to use a temporary one. After a failure *tj is destroyed
// and replaced by a fresh handle (NULL if that fails; made again on the next call), since a
// failed header leaves libjpeg-turbo's state behind for the next image. The caller keeps
// owning *tj and releases it with tjDestroy(). Returns SER_OK, SER_ENOMEM, or SER_EFORMAT
// with a reason in err.
int ser_dl_decode_jpeg(void **tj, const uint8_t *buf, size_t n, ser_dl_image *out,
                       char err[256]);

// Decodes a PNG held in memory to RGB with libpng, as PIL's Image.open(...).convert("RGB"):
// palette images take their colours (tRNS ignored), 1/2/4-bit grey is scaled to 8 bits, 16-bit
// RGB / RGBA / grey+alpha keep the high byte, alpha is dropped (not composited), grey is
// replicated, and 16-bit grey alone is clipped to 255 (PIL reads it as a 32-bit integer image).
// Interlaced images are read whole. At most 178956970 pixels (PIL's limit, as for JPEG);
// truncated data (IDAT cut short), a bad CRC on a critical chunk or a corrupt stream is an
// error, never a crash. Returns SER_OK, SER_ENOMEM, or SER_EFORMAT with a reason in err.
int ser_dl_decode_png(const uint8_t *buf, size_t n, ser_dl_image *out, char err[256]);

// Decodes a JPEG or a PNG, chosen by its signature (as PIL does, whatever the file's name);
// tj as for ser_dl_decode_jpeg (untouched for a PNG). SER_EFORMAT "not a JPEG or PNG file" for
// anything else.
int ser_dl_decode_image(void **tj, const uint8_t *buf, size_t n, ser_dl_image *out,
                        char err[256]);

// Encodes RGB (h, w, 3) to a JPEG file (4:2:0, quality q). Returns SER_OK or SER_EIO.
int ser_dl_encode_jpeg(const char *path, const uint8_t *rgb, int w, int h, int q);

// Writes ROOT/train/cNN/iNNNN.jpg: nclasses x per_class JPEGs with smooth, distinctive content
// (colour ramps plus a class-dependent pattern), sizes varying around w x h, drawn from
// (seed, SER_RNG_FIXTURE). Creates the folders. Returns SER_OK or SER_EIO with err.
int ser_dl_data_make_synthetic(const char *root, int nclasses, int per_class, int w, int h,
                               uint64_t seed, char err[256]);

#endif
