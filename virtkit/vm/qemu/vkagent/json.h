/* vkagent's JSON values, JSON writing and base64: what the qemu-guest-agent protocol needs, no more. */
#ifndef VKAGENT_JSON_H
#define VKAGENT_JSON_H

#include <stddef.h>

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jval {
    enum jtype type;
    char *key;              /* the member's name, inside an object */
    char *str;              /* J_STR: decoded, NUL-terminated (slen bytes; may hold NULs) */
    size_t slen;
    long long num;          /* J_NUM (integers only: the protocol has no others); J_BOOL: 0/1 */
    const char *raw;        /* where the value starts in the parsed text, and its length: "id" is echoed raw */
    size_t rawlen;
    struct jval *child;     /* J_ARR, J_OBJ: first element or member */
    struct jval *next;
};

struct jval *json_parse(const char *text, size_t len);      /* NULL: not JSON */
void json_free(struct jval *v);
struct jval *json_get(const struct jval *obj, const char *key);

/* a growing byte buffer; on out-of-memory the agent exits (init restarts nothing: better dead than wrong) */
struct buf {
    char *p;
    size_t len, cap;
};

void buf_add(struct buf *b, const void *data, size_t n);
void buf_str(struct buf *b, const char *s);
void buf_fmt(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_drop(struct buf *b, size_t n);     /* remove the first n bytes */
void buf_free(struct buf *b);
void json_quote(struct buf *b, const char *s, size_t n);

void b64_encode(struct buf *b, const unsigned char *data, size_t n);
int b64_decode(const char *s, size_t n, struct buf *out);   /* -1: not base64 */

/* how far a complete JSON object at the start of `p` reaches: its length, 0 if it is not complete yet */
size_t json_object_end(const char *p, size_t n);

#endif
