#include <zlib.h>

/* deflateInit2 and inflateInit2 are macros (they pass the version and the stream's size): Swift
   cannot call them. */
static inline int zlibx_deflate_init_gzip(z_stream *s, int level) {
    return deflateInit2(s, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}
static inline int zlibx_inflate_init_gzip(z_stream *s) { return inflateInit2(s, 15 + 16); }
