/* Shared helpers for agentrt transforms: WASI command modules that read all of stdin and
 * write all of stdout. Every transform buffers its whole output and writes it only on
 * success, so a failed run (exit code 2) leaves stdout empty.
 *
 * Exit codes: 0 success, 1 internal error (out of memory, I/O), 2 malformed input. */
#ifndef AGENTRT_TRANSFORM_H
#define AGENTRT_TRANSFORM_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_INTERNAL 1
#define EXIT_BAD_INPUT 2

typedef struct {
    unsigned char *data;
    size_t len;
    size_t cap;
} buf_t;

static inline void fail(int code, const char *name, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: ", name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

static inline void buf_reserve(buf_t *b, size_t extra) {
    if (b->cap - b->len >= extra) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra) {
        if (cap > ((size_t)-1) / 2) fail(EXIT_INTERNAL, "transform", "out of memory");
        cap *= 2;
    }
    unsigned char *p = realloc(b->data, cap);
    if (!p) fail(EXIT_INTERNAL, "transform", "out of memory");
    b->data = p;
    b->cap = cap;
}

static inline void buf_put(buf_t *b, const void *src, size_t n) {
    buf_reserve(b, n);
    memcpy(b->data + b->len, src, n);
    b->len += n;
}

static inline void buf_putc(buf_t *b, unsigned char c) {
    buf_reserve(b, 1);
    b->data[b->len++] = c;
}

static inline void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

/* Reads all of stdin. The buffer always has one spare byte after the data. */
static inline buf_t read_stdin(void) {
    buf_t b = {0};
    for (;;) {
        buf_reserve(&b, 65536);
        size_t n = fread(b.data + b.len, 1, b.cap - b.len - 1, stdin);
        b.len += n;
        if (n == 0) break;
    }
    if (ferror(stdin)) fail(EXIT_INTERNAL, "transform", "error reading stdin");
    return b;
}

static inline void write_stdout(const buf_t *b) {
    if (b->len && fwrite(b->data, 1, b->len, stdout) != b->len)
        fail(EXIT_INTERNAL, "transform", "error writing stdout");
    if (fflush(stdout) != 0) fail(EXIT_INTERNAL, "transform", "error writing stdout");
}

/* Returns the offset of the first byte that is not part of well-formed UTF-8 (no overlong
 * forms, no surrogates, nothing above U+10FFFF), or len if the whole input is valid. */
static inline size_t utf8_invalid_at(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c == 0xE0) { n = 2; lo = 0xA0; }
        else if (c == 0xED) { n = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) n = 2;
        else if (c == 0xF0) { n = 3; lo = 0x90; }
        else if (c == 0xF4) { n = 3; hi = 0x8F; }
        else if (c >= 0xF1 && c <= 0xF3) n = 3;
        else return i;
        if (len - i <= n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        i += n + 1;
    }
    return len;
}

#endif
