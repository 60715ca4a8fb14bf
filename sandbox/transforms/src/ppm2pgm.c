/* ppm2pgm: binary PPM (P6, maxval 255) -> binary PGM (P5, maxval 255) grayscale.
 *
 * Gray = (299 R + 587 G + 114 B + 500) / 1000 (ITU-R BT.601 luma, integer, rounded).
 * Header: "P6", width, height, maxval separated by whitespace, '#' comments allowed between
 * them, then exactly one whitespace byte before the raster. Output header: "P5\n<w> <h>\n255\n".
 * Exit 2 (message on stderr, nothing on stdout) on: wrong magic, a missing or non-numeric
 * field, width or height of 0 or above 65535, maxval other than 255, a raster shorter or
 * longer than width * height * 3 bytes.
 */
#define TRANSFORM_NAME "ppm2pgm"
#include "transform.h"

#define MAX_DIM 65535u

static int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Skips whitespace and comments, then parses a decimal number into *value. Returns 0, or
 * EXIT_BAD_INPUT after reporting. */
static int read_number(const unsigned char *s, size_t n, size_t *pos, const char *what,
                       unsigned long *value) {
    size_t i = *pos;
    for (;;) {
        while (i < n && is_space(s[i])) i++;
        if (i < n && s[i] == '#') {
            while (i < n && s[i] != '\n' && s[i] != '\r') i++;
            continue;
        }
        break;
    }
    if (i >= n || s[i] < '0' || s[i] > '9') return report(EXIT_BAD_INPUT, "header: expected %s", what);
    unsigned long v = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        v = v * 10 + (unsigned long)(s[i] - '0');
        if (v > 1000000ul) return report(EXIT_BAD_INPUT, "header: %s too large", what);
        i++;
    }
    *pos = i;
    *value = v;
    return 0;
}

static int transform(unsigned char *in, size_t n, buf_t *out) {
    const unsigned char *s = in;
    if (n < 2 || s[0] != 'P' || s[1] != '6') return report(EXIT_BAD_INPUT, "not a binary PPM (P6) image");
    size_t pos = 2;
    if (pos >= n || !(is_space(s[pos]) || s[pos] == '#'))
        return report(EXIT_BAD_INPUT, "header: expected whitespace after P6");
    unsigned long width, height, maxval;
    int rc;
    if ((rc = read_number(s, n, &pos, "width", &width))) return rc;
    if ((rc = read_number(s, n, &pos, "height", &height))) return rc;
    if ((rc = read_number(s, n, &pos, "maxval", &maxval))) return rc;
    if (width == 0 || height == 0 || width > MAX_DIM || height > MAX_DIM)
        return report(EXIT_BAD_INPUT, "header: bad size %lux%lu", width, height);
    if (maxval != 255) return report(EXIT_BAD_INPUT, "header: maxval %lu unsupported (need 255)", maxval);
    if (pos >= n || !is_space(s[pos]))
        return report(EXIT_BAD_INPUT, "header: expected one whitespace byte before the raster");
    pos++;

    unsigned long long pixels = (unsigned long long)width * height;
    unsigned long long have = n - pos;
    if (have < pixels * 3)
        return report(EXIT_BAD_INPUT, "raster truncated: %llu bytes, need %llu", have, pixels * 3);
    if (have > pixels * 3)
        return report(EXIT_BAD_INPUT, "%llu bytes of trailing data after the raster", have - pixels * 3);

    char header[64];
    int hl = snprintf(header, sizeof header, "P5\n%lu %lu\n255\n", width, height);
    buf_put(out, header, (size_t)hl);
    if (buf_reserve(out, (size_t)pixels)) return report(EXIT_INTERNAL, "out of memory");
    const unsigned char *p = s + pos;
    for (size_t k = 0; k < (size_t)pixels; k++, p += 3)
        out->data[out->len++] = (unsigned char)((299u * p[0] + 587u * p[1] + 114u * p[2] + 500u) / 1000u);
    return 0;
}
