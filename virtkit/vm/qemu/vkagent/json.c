/* vkagent's JSON parser and writer and its base64 codec (see json.h). */
#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 32

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        fputs("vkagent: out of memory\n", stderr);
        exit(1);
    }
    return p;
}

/* -- buffers ---------------------------------------------------------------------------------------------- */
void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
}

void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

void buf_fmt(struct buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

void buf_drop(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->p)
        b->p[b->len] = 0;
}

void buf_free(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void json_quote(struct buf *b, const char *s, size_t n)
{
    buf_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            buf_add(b, esc, 2);
        } else if (c < 0x20) {
            buf_fmt(b, "\\u%04x", c);
        } else {
            buf_add(b, &s[i], 1);
        }
    }
    buf_add(b, "\"", 1);
}

/* -- parsing ---------------------------------------------------------------------------------------------- */
struct parser {
    const char *p, *end;
    int depth;
};

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(struct buf *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_add(b, u, n);
}

static int parse_string(struct parser *ps, struct buf *out)
{
    if (ps->p >= ps->end || *ps->p != '"')
        return -1;
    ps->p++;
    while (ps->p < ps->end) {
        char c = *ps->p++;
        if (c == '"')
            return 0;
        if (c != '\\') {
            buf_add(out, &c, 1);
            continue;
        }
        if (ps->p >= ps->end)
            return -1;
        c = *ps->p++;
        switch (c) {
        case '"': case '\\': case '/': buf_add(out, &c, 1); break;
        case 'b': buf_add(out, "\b", 1); break;
        case 'f': buf_add(out, "\f", 1); break;
        case 'n': buf_add(out, "\n", 1); break;
        case 'r': buf_add(out, "\r", 1); break;
        case 't': buf_add(out, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (ps->end - ps->p < 4 || hex4(ps->p, &cp))
                return -1;
            ps->p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u'
                && !hex4(ps->p + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                ps->p += 6;
            }
            put_utf8(out, cp);
            break;
        }
        default:
            return -1;
        }
    }
    return -1;
}

static struct jval *parse_value(struct parser *ps);

static struct jval *parse_container(struct parser *ps, struct jval *v, char close)
{
    struct jval **tail = &v->child;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return v;
    }
    for (;;) {
        struct buf key = {0};
        skip_ws(ps);
        if (close == '}') {
            if (parse_string(ps, &key) < 0) {
                buf_free(&key);
                return NULL;
            }
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p++ != ':') {
                buf_free(&key);
                return NULL;
            }
        }
        struct jval *item = parse_value(ps);
        if (!item) {
            buf_free(&key);
            return NULL;
        }
        item->key = key.p ? key.p : (close == '}' ? calloc(1, 1) : NULL);
        *tail = item;
        tail = &item->next;
        skip_ws(ps);
        if (ps->p >= ps->end)
            return NULL;
        char c = *ps->p++;
        if (c == close)
            return v;
        if (c != ',')
            return NULL;
    }
}

static struct jval *parse_value(struct parser *ps)
{
    skip_ws(ps);
    if (ps->p >= ps->end || ps->depth >= MAX_DEPTH)
        return NULL;
    struct jval *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->raw = ps->p;
    char c = *ps->p;
    int ok = 1;
    if (c == '{' || c == '[') {
        v->type = c == '{' ? J_OBJ : J_ARR;
        ps->depth++;
        ok = parse_container(ps, v, c == '{' ? '}' : ']') != NULL;
        ps->depth--;
    } else if (c == '"') {
        struct buf s = {0};
        v->type = J_STR;
        ok = parse_string(ps, &s) == 0;
        v->str = s.p ? s.p : calloc(1, 1);
        v->slen = s.len;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        char *endp;
        v->type = J_NUM;
        v->num = strtoll(ps->p, &endp, 10);
        ok = endp > ps->p && endp <= ps->end;
        ps->p = endp;
        /* a fraction or exponent: not used by the protocol; skipped, the integer part kept */
        while (ps->p < ps->end && strchr(".eE+-0123456789", *ps->p))
            ps->p++;
    } else if (ps->end - ps->p >= 4 && !memcmp(ps->p, "true", 4)) {
        v->type = J_BOOL, v->num = 1, ps->p += 4;
    } else if (ps->end - ps->p >= 5 && !memcmp(ps->p, "false", 5)) {
        v->type = J_BOOL, ps->p += 5;
    } else if (ps->end - ps->p >= 4 && !memcmp(ps->p, "null", 4)) {
        v->type = J_NULL, ps->p += 4;
    } else {
        ok = 0;
    }
    v->rawlen = (size_t)(ps->p - v->raw);
    if (!ok) {
        json_free(v);
        return NULL;
    }
    return v;
}

struct jval *json_parse(const char *text, size_t len)
{
    struct parser ps = {text, text + len, 0};
    struct jval *v = parse_value(&ps);
    skip_ws(&ps);
    if (v && ps.p != ps.end) {
        json_free(v);
        return NULL;
    }
    return v;
}

void json_free(struct jval *v)
{
    while (v) {
        struct jval *next = v->next;
        json_free(v->child);
        free(v->key);
        free(v->str);
        free(v);
        v = next;
    }
}

struct jval *json_get(const struct jval *obj, const char *key)
{
    if (!obj || obj->type != J_OBJ)
        return NULL;
    for (struct jval *m = obj->child; m; m = m->next)
        if (m->key && !strcmp(m->key, key))
            return m;
    return NULL;
}

size_t json_object_end(const char *p, size_t n)
{
    int depth = 0, in_str = 0, esc = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (in_str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth <= 0)
                return i + 1;
        }
    }
    return 0;
}

/* -- base64 ----------------------------------------------------------------------------------------------- */
static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void b64_encode(struct buf *b, const unsigned char *d, size_t n)
{
    char q[4];
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)d[i] << 16 | (i + 1 < n ? (unsigned)d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
        q[0] = B64[v >> 18 & 63];
        q[1] = B64[v >> 12 & 63];
        q[2] = i + 1 < n ? B64[v >> 6 & 63] : '=';
        q[3] = i + 2 < n ? B64[v & 63] : '=';
        buf_add(b, q, 4);
    }
}

int b64_decode(const char *s, size_t n, struct buf *out)
{
    unsigned v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        const char *pos;
        if (c == '=')
            break;
        if (c == '\n' || c == '\r' || c == ' ')
            continue;
        if (!c || !(pos = strchr(B64, c)))
            return -1;
        v = v << 6 | (unsigned)(pos - B64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            char byte = (char)(v >> bits & 0xFF);
            buf_add(out, &byte, 1);
        }
    }
    return 0;
}
