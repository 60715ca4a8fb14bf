/* csv2json: CSV (RFC 4180) with a header row -> JSON array of objects with string values.
 *
 * - Fields separated by ',', records by CRLF, LF or a lone CR; a final line ending is optional.
 * - Quoted fields may contain ',', line breaks and "" (an escaped quote).
 * - Empty lines are skipped; a leading UTF-8 byte-order mark is dropped.
 * - Output: [{"col":"value",...},...] followed by "\n", keys in header order.
 * - Exit 2 (message on stderr, nothing on stdout) on: invalid UTF-8, an unterminated quoted
 *   field, text between a closing quote and the next separator, a record whose field count
 *   differs from the header's, or a duplicate header name.
 */
#define TRANSFORM_NAME "csv2json"
#include "transform.h"

typedef struct {
    size_t off, len;
} field_t;

typedef struct {
    field_t *v;
    size_t n, cap;
} fields_t;

/* Returns 0, or EXIT_INTERNAL after reporting. */
static int fields_push(fields_t *f, size_t off, size_t len) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        field_t *p = realloc(f->v, cap * sizeof *p);
        if (!p) return report(EXIT_INTERNAL, "out of memory");
        f->v = p;
        f->cap = cap;
    }
    f->v[f->n].off = off;
    f->v[f->n].len = len;
    f->n++;
    return 0;
}

/* Parser state. Unescaped field text is written back into the input buffer at w, which never
 * passes the read position r, so earlier fields (the header) stay intact. */
typedef struct {
    unsigned char *b;
    size_t n, r, w;
    size_t line;
} parser_t;

#define NEXT_END 0
#define NEXT_RECORD 1
#define NEXT_ERROR (-1) /* reported; the exit code is in *err */

/* Parses one record into out. Returns NEXT_END, NEXT_RECORD or NEXT_ERROR. */
static int next_record(parser_t *ps, fields_t *out, size_t *record_line, int *err) {
    unsigned char *b = ps->b;
    size_t n = ps->n, r = ps->r, w = ps->w, line = ps->line;
    int rc = NEXT_RECORD;
    out->n = 0;
    /* skip empty lines */
    while (r < n && (b[r] == '\r' || b[r] == '\n')) {
        if (b[r] == '\n') line++;
        r++;
    }
    if (r >= n) {
        rc = NEXT_END;
        goto done;
    }
    *record_line = line;
    for (;;) {
        size_t start = w;
        if (b[r] == '"') {
            size_t open_line = line;
            r++;
            for (;;) {
                if (r >= n) {
                    *err = report(EXIT_BAD_INPUT, "line %zu: unterminated quoted field", open_line);
                    rc = NEXT_ERROR;
                    goto done;
                }
                unsigned char c = b[r];
                if (c == '"') {
                    if (r + 1 < n && b[r + 1] == '"') {
                        b[w++] = '"';
                        r += 2;
                        continue;
                    }
                    r++;
                    break;
                }
                if (c == '\n') line++;
                b[w++] = c;
                r++;
            }
            if (r < n && b[r] != ',' && b[r] != '\r' && b[r] != '\n') {
                *err = report(EXIT_BAD_INPUT, "line %zu: unexpected character after closing quote", line);
                rc = NEXT_ERROR;
                goto done;
            }
        } else {
            while (r < n && b[r] != ',' && b[r] != '\r' && b[r] != '\n') b[w++] = b[r++];
        }
        if ((*err = fields_push(out, start, w - start))) {
            rc = NEXT_ERROR;
            goto done;
        }
        if (r >= n) goto done;
        if (b[r] == ',') {
            r++;
            if (r >= n) { /* trailing comma at end of input: one more empty field */
                if ((*err = fields_push(out, w, 0))) rc = NEXT_ERROR;
                goto done;
            }
            continue;
        }
        if (b[r] == '\r') {
            r++;
            if (r < n && b[r] == '\n') r++;
        } else { /* '\n' */
            r++;
        }
        line++;
        goto done;
    }
done:
    ps->r = r;
    ps->w = w;
    ps->line = line;
    return rc;
}

static void put_json_string(buf_t *o, const unsigned char *b, const field_t *f) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = b + f->off;
    buf_putc(o, '"');
    for (size_t i = 0; i < f->len; i++) {
        unsigned char c = s[i];
        switch (c) {
        case '"': buf_puts(o, "\\\""); break;
        case '\\': buf_puts(o, "\\\\"); break;
        case '\n': buf_puts(o, "\\n"); break;
        case '\r': buf_puts(o, "\\r"); break;
        case '\t': buf_puts(o, "\\t"); break;
        case '\b': buf_puts(o, "\\b"); break;
        case '\f': buf_puts(o, "\\f"); break;
        default:
            if (c < 0x20) {
                buf_puts(o, "\\u00");
                buf_putc(o, (unsigned char)hex[c >> 4]);
                buf_putc(o, (unsigned char)hex[c & 15]);
            } else {
                buf_putc(o, c);
            }
        }
    }
    buf_putc(o, '"');
}

static int convert(parser_t *ps, fields_t *header, fields_t *rec, buf_t *out) {
    const unsigned char *b = ps->b;
    size_t rec_line = 0;
    int err = 0, next;
    buf_putc(out, '[');
    next = next_record(ps, header, &rec_line, &err);
    if (next == NEXT_ERROR) return err;
    if (next == NEXT_RECORD) {
        for (size_t i = 0; i < header->n; i++)
            for (size_t j = 0; j < i; j++)
                if (header->v[i].len == header->v[j].len &&
                    memcmp(b + header->v[i].off, b + header->v[j].off, header->v[i].len) == 0)
                    return report(EXIT_BAD_INPUT, "line %zu: duplicate header name in column %zu",
                                  rec_line, i + 1);
        int first = 1;
        while ((next = next_record(ps, rec, &rec_line, &err)) == NEXT_RECORD) {
            if (rec->n != header->n)
                return report(EXIT_BAD_INPUT, "line %zu: record has %zu fields, header has %zu",
                              rec_line, rec->n, header->n);
            buf_puts(out, first ? "{" : ",{");
            first = 0;
            for (size_t i = 0; i < rec->n; i++) {
                if (i) buf_putc(out, ',');
                put_json_string(out, b, &header->v[i]);
                buf_putc(out, ':');
                put_json_string(out, b, &rec->v[i]);
            }
            buf_putc(out, '}');
            if (out->oom) return 0; /* reported by the caller */
        }
        if (next == NEXT_ERROR) return err;
    }
    buf_puts(out, "]\n");
    return 0;
}

static int transform(unsigned char *in, size_t n, buf_t *out) {
    size_t bad = utf8_invalid_at(in, n);
    if (bad != n) return report(EXIT_BAD_INPUT, "invalid UTF-8 at byte offset %zu", bad);
    parser_t ps = {in, n, 0, 0, 1};
    if (n >= 3 && in[0] == 0xEF && in[1] == 0xBB && in[2] == 0xBF) ps.r = ps.w = 3;
    fields_t header = {0}, rec = {0};
    int rc = convert(&ps, &header, &rec, out);
    free(header.v);
    free(rec.v);
    return rc;
}
