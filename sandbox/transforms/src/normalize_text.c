/* normalize_text: canonical plain text for document pipelines.
 *
 * - CRLF and lone CR line endings become LF; a leading UTF-8 byte-order mark is dropped.
 * - Trailing spaces and tabs are removed from every line.
 * - Runs of blank lines collapse to one blank line; leading and trailing blank lines go.
 * - Non-empty output ends with exactly one "\n"; all-blank input gives empty output.
 * - Exit 2 (message on stderr, nothing on stdout) if the input is not valid UTF-8 or contains
 *   a NUL byte (binary data rather than text).
 */
#define TRANSFORM_NAME "normalize_text"
#include "transform.h"

static int transform(unsigned char *in, size_t n, buf_t *out) {
    const unsigned char *s = in;
    size_t bad = utf8_invalid_at(s, n);
    if (bad != n) return report(EXIT_BAD_INPUT, "invalid UTF-8 at byte offset %zu", bad);
    const unsigned char *nul = n ? memchr(s, 0, n) : NULL;
    if (nul) return report(EXIT_BAD_INPUT, "NUL byte at offset %zu: input is not text", (size_t)(nul - s));

    size_t i = (n >= 3 && s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF) ? 3 : 0;
    size_t pending_blank = 0; /* blank lines seen since the last non-blank line */
    int any = 0;              /* a non-blank line has been written */
    while (i < n) {
        size_t start = i;
        while (i < n && s[i] != '\r' && s[i] != '\n') i++;
        size_t end = i;
        if (i < n) { /* consume the line ending */
            if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') i++;
            i++;
        }
        while (end > start && (s[end - 1] == ' ' || s[end - 1] == '\t')) end--;
        if (end == start) {
            pending_blank++;
            continue;
        }
        if (any && pending_blank) buf_putc(out, '\n');
        buf_put(out, s + start, end - start);
        buf_putc(out, '\n');
        pending_blank = 0;
        any = 1;
    }
    return 0;
}
