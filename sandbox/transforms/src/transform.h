/* Shared helpers and entry points for agentrt transforms.
 *
 * Each transform defines TRANSFORM_NAME, includes this header and defines
 *
 *     static int transform(unsigned char *in, size_t n, buf_t *out);
 *
 * which turns the n input bytes into out and returns 0, or reports one line on stderr with
 * report() and returns EXIT_BAD_INPUT (2) or EXIT_INTERNAL (1). It may modify the input bytes.
 * Output that fails to grow (out of memory) sets out->oom instead of failing at once; the
 * entry points turn that into an internal error.
 *
 * The header then provides both entry points, built into the same module:
 *  - main: the WASI command. Reads all of stdin, runs transform, and writes stdout only on
 *    success, so a failed run leaves stdout empty. The exit code is transform's return code.
 *  - the buffer ABI exports agentrt_alloc, agentrt_free, agentrt_run, agentrt_output_ptr and
 *    agentrt_output_len (see README.md), which work without calling _start.
 *
 * Exit codes: 0 success, 1 internal error (out of memory, I/O), 2 malformed input. */
#ifndef AGENTRT_TRANSFORM_H
#define AGENTRT_TRANSFORM_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TRANSFORM_NAME
#error "define TRANSFORM_NAME before including transform.h"
#endif

#define EXIT_INTERNAL 1
#define EXIT_BAD_INPUT 2

#define AGENTRT_EXPORT(name) __attribute__((export_name(name), visibility("default")))

typedef struct {
    unsigned char *data;
    size_t len;
    size_t cap;
    int oom; /* a reservation failed; the contents are incomplete */
} buf_t;

/* Writes "<TRANSFORM_NAME>: <message>\n" to stderr in one write and returns code. */
static int report(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int report(int code, const char *fmt, ...) {
    char line[256];
    int len = snprintf(line, sizeof line, "%s: ", TRANSFORM_NAME);
    if (len < 0) len = 0;
    va_list ap;
    va_start(ap, fmt);
    int more = vsnprintf(line + len, sizeof line - (size_t)len - 1, fmt, ap);
    va_end(ap);
    if (more > 0) len += more;
    if ((size_t)len > sizeof line - 2) len = (int)sizeof line - 2;
    line[len++] = '\n';
    fwrite(line, 1, (size_t)len, stderr);
    fflush(stderr);
    return code;
}

/* Makes room for extra more bytes. Returns 0, or -1 (and sets b->oom) if out of memory. */
static inline int buf_reserve(buf_t *b, size_t extra) {
    if (b->oom) return -1;
    if (b->cap - b->len >= extra) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra) {
        if (cap > ((size_t)-1) / 2) {
            b->oom = 1;
            return -1;
        }
        cap *= 2;
    }
    unsigned char *p = realloc(b->data, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static inline void buf_put(buf_t *b, const void *src, size_t n) {
    if (n == 0 || buf_reserve(b, n)) return;
    memcpy(b->data + b->len, src, n);
    b->len += n;
}

static inline void buf_putc(buf_t *b, unsigned char c) {
    if (buf_reserve(b, 1)) return;
    b->data[b->len++] = c;
}

static inline void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

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

/* ---- entry points ------------------------------------------------------------------------ */

static int transform(unsigned char *in, size_t n, buf_t *out);

/* Runs transform on in[0..n) into out (whose previous contents are dropped). On failure the
 * message is on stderr, out->len is 0 and the return value is 1 or 2. */
static int run_transform(unsigned char *in, size_t n, buf_t *out) {
    out->len = 0;
    out->oom = 0;
    int rc = transform(in, n, out);
    if (rc == 0 && out->oom) rc = report(EXIT_INTERNAL, "out of memory");
    if (rc != 0) out->len = 0;
    return rc;
}

/* WASI command: stdin -> transform -> stdout; the return value becomes the exit code. */
int main(void) {
    buf_t in = {0}, out = {0};
    for (;;) {
        if (buf_reserve(&in, 65536)) return report(EXIT_INTERNAL, "out of memory");
        size_t got = fread(in.data + in.len, 1, in.cap - in.len, stdin);
        in.len += got;
        if (got == 0) break;
    }
    if (ferror(stdin)) return report(EXIT_INTERNAL, "error reading stdin");
    int rc = run_transform(in.data, in.len, &out);
    if (rc != 0) return rc;
    if (out.len && fwrite(out.data, 1, out.len, stdout) != out.len)
        return report(EXIT_INTERNAL, "error writing stdout");
    if (fflush(stdout) != 0) return report(EXIT_INTERNAL, "error writing stdout");
    return 0;
}

/* Buffer ABI: the host writes the input into memory from agentrt_alloc, calls agentrt_run,
 * then reads agentrt_output_len() bytes at agentrt_output_ptr(). The output stays valid until
 * the next agentrt_run; the input buffer's contents are unspecified after a run. */
static buf_t agentrt_out;

AGENTRT_EXPORT("agentrt_alloc") void *agentrt_alloc(size_t size) {
    return malloc(size ? size : 1);
}

AGENTRT_EXPORT("agentrt_free") void agentrt_free(void *ptr) { free(ptr); }

AGENTRT_EXPORT("agentrt_run") int agentrt_run(unsigned char *ptr, size_t len) {
    if (!ptr && len) {
        agentrt_out.len = 0;
        return report(EXIT_INTERNAL, "agentrt_run: null input pointer");
    }
    return run_transform(ptr, len, &agentrt_out);
}

AGENTRT_EXPORT("agentrt_output_ptr") unsigned char *agentrt_output_ptr(void) {
    return agentrt_out.data;
}

AGENTRT_EXPORT("agentrt_output_len") size_t agentrt_output_len(void) { return agentrt_out.len; }

#endif
