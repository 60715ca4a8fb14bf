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
#include "transform.h"

#define NAME "csv2json"

typedef struct {
    size_t off, len;
} field_t;

typedef struct {
    field_t *v;
    size_t n, cap;
} fields_t;

static void fields_push(fields_t *f, size_t off, size_t len) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        field_t *p = realloc(f->v, cap * sizeof *p);
        if (!p) fail(EXIT_INTERNAL, NAME, "out of memory");
        f->v = p;
        f->cap = cap;
    }
    f->v[f->n].off = off;
    f->v[f->n].len = len;
    f->n++;
}

/* Parser state. Unescaped field text is written back into the input buffer at w, which never
 * passes the read position r, so earlier fields (the header) stay intact. */
static unsigned char *b;
static size_t n, r, w;
static size_t line = 1;

/* Parses one record into out. Returns 0 at end of input, 1 otherwise. */
static int next_record(fields_t *out, size_t *record_line) {
    out->n = 0;
    /* skip empty lines */
    while (r < n && (b[r] == '\r' || b[r] == '\n')) {
        if (b[r] == '\n') line++;
        r++;
    }
    if (r >= n) return 0;
    *record_line = line;
    for (;;) {
        size_t start = w;
        if (b[r] == '"') {
            size_t open_line = line;
            r++;
            for (;;) {
                if (r >= n) fail(EXIT_BAD_INPUT, NAME, "line %zu: unterminated quoted field", open_line);
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
            if (r < n && b[r] != ',' && b[r] != '\r' && b[r] != '\n')
                fail(EXIT_BAD_INPUT, NAME, "line %zu: unexpected character after closing quote", line);
        } else {
            while (r < n && b[r] != ',' && b[r] != '\r' && b[r] != '\n') b[w++] = b[r++];
        }
        fields_push(out, start, w - start);
        if (r >= n) return 1;
        if (b[r] == ',') {
            r++;
            if (r >= n) { /* trailing comma at end of input: one more empty field */
                fields_push(out, w, 0);
                return 1;
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
        return 1;
    }
}

static void put_json_string(buf_t *o, const field_t *f) {
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

int main(void) {
    buf_t in = read_stdin();
    b = in.data;
    n = in.len;
    size_t bad = utf8_invalid_at(b, n);
    if (bad != n) fail(EXIT_BAD_INPUT, NAME, "invalid UTF-8 at byte offset %zu", bad);
    if (n >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF) r = w = 3;

    fields_t header = {0}, rec = {0};
    buf_t out = {0};
    size_t rec_line = 0;
    buf_putc(&out, '[');
    if (next_record(&header, &rec_line)) {
        for (size_t i = 0; i < header.n; i++)
            for (size_t j = 0; j < i; j++)
                if (header.v[i].len == header.v[j].len &&
                    memcmp(b + header.v[i].off, b + header.v[j].off, header.v[i].len) == 0)
                    fail(EXIT_BAD_INPUT, NAME, "line %zu: duplicate header name in column %zu",
                         rec_line, i + 1);
        int first = 1;
        while (next_record(&rec, &rec_line)) {
            if (rec.n != header.n)
                fail(EXIT_BAD_INPUT, NAME, "line %zu: record has %zu fields, header has %zu",
                     rec_line, rec.n, header.n);
            buf_puts(&out, first ? "{" : ",{");
            first = 0;
            for (size_t i = 0; i < rec.n; i++) {
                if (i) buf_putc(&out, ',');
                put_json_string(&out, &header.v[i]);
                buf_putc(&out, ':');
                put_json_string(&out, &rec.v[i]);
            }
            buf_putc(&out, '}');
        }
    }
    buf_puts(&out, "]\n");
    write_stdout(&out);
    return 0;
}
