/* ppm2pgm: binary PPM (P6, maxval 255) -> binary PGM (P5, maxval 255) grayscale.
 *
 * Gray = (299 R + 587 G + 114 B + 500) / 1000 (ITU-R BT.601 luma, integer, rounded).
 * Header: "P6", width, height, maxval separated by whitespace, '#' comments allowed between
 * them, then exactly one whitespace byte before the raster. Output header: "P5\n<w> <h>\n255\n".
 * Exit 2 (message on stderr, nothing on stdout) on: wrong magic, a missing or non-numeric
 * field, width or height of 0 or above 65535, maxval other than 255, a raster shorter or
 * longer than width * height * 3 bytes.
 */
#include "transform.h"

#define NAME "ppm2pgm"
#define MAX_DIM 65535u

static int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Skips whitespace and comments, then parses a decimal number. */
static unsigned long read_number(const unsigned char *s, size_t n, size_t *pos, const char *what) {
    size_t i = *pos;
    for (;;) {
        while (i < n && is_space(s[i])) i++;
        if (i < n && s[i] == '#') {
            while (i < n && s[i] != '\n' && s[i] != '\r') i++;
            continue;
        }
        break;
    }
    if (i >= n || s[i] < '0' || s[i] > '9') fail(EXIT_BAD_INPUT, NAME, "header: expected %s", what);
    unsigned long v = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        v = v * 10 + (unsigned long)(s[i] - '0');
        if (v > 1000000ul) fail(EXIT_BAD_INPUT, NAME, "header: %s too large", what);
        i++;
    }
    *pos = i;
    return v;
}

int main(void) {
    buf_t in = read_stdin();
    const unsigned char *s = in.data;
    size_t n = in.len;
    if (n < 2 || s[0] != 'P' || s[1] != '6') fail(EXIT_BAD_INPUT, NAME, "not a binary PPM (P6) image");
    size_t pos = 2;
    if (pos >= n || !(is_space(s[pos]) || s[pos] == '#'))
        fail(EXIT_BAD_INPUT, NAME, "header: expected whitespace after P6");
    unsigned long width = read_number(s, n, &pos, "width");
    unsigned long height = read_number(s, n, &pos, "height");
    unsigned long maxval = read_number(s, n, &pos, "maxval");
    if (width == 0 || height == 0 || width > MAX_DIM || height > MAX_DIM)
        fail(EXIT_BAD_INPUT, NAME, "header: bad size %lux%lu", width, height);
    if (maxval != 255) fail(EXIT_BAD_INPUT, NAME, "header: maxval %lu unsupported (need 255)", maxval);
    if (pos >= n || !is_space(s[pos]))
        fail(EXIT_BAD_INPUT, NAME, "header: expected one whitespace byte before the raster");
    pos++;

    unsigned long long pixels = (unsigned long long)width * height;
    unsigned long long have = n - pos;
    if (have < pixels * 3)
        fail(EXIT_BAD_INPUT, NAME, "raster truncated: %llu bytes, need %llu", have, pixels * 3);
    if (have > pixels * 3)
        fail(EXIT_BAD_INPUT, NAME, "%llu bytes of trailing data after the raster", have - pixels * 3);

    buf_t out = {0};
    char header[64];
    int hl = snprintf(header, sizeof header, "P5\n%lu %lu\n255\n", width, height);
    buf_put(&out, header, (size_t)hl);
    buf_reserve(&out, (size_t)pixels);
    const unsigned char *p = s + pos;
    for (size_t k = 0; k < (size_t)pixels; k++, p += 3)
        out.data[out.len++] = (unsigned char)((299u * p[0] + 587u * p[1] + 114u * p[2] + 500u) / 1000u);
    write_stdout(&out);
    return 0;
}
