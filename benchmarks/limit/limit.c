/*
 * The limit: a minimal single-threaded chat server in C, speaking protocol v1 as far as
 * the load scenarios need it, so that `make bench` can put roomchat's CPU per delivery
 * next to what this machine can do at best, in the same run (issue 20).
 *
 * It is not a product and not a second server: no limits, no history, no v2, no room
 * file (rooms are "room-0" .. "room-N-1"), commands parsed by looking for their keys.
 * What it does per loop turn is what a fast native server does: wait (epoll), accept
 * every pending connection, read every readable session once (64 KiB) and handle its
 * lines, then write each session's turn of output with one write. Bytes a socket does
 * not take wait for the next turn (EPOLLOUT wakes it).
 *
 *     cc -O2 -o limit limit.c && ./limit --port 0 --rooms 24
 *
 * It prints "listening on 127.0.0.1:PORT" on stderr, as `roomchat serve` does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_ROOMS 256
#define READ_SIZE 65536

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

typedef struct conn {
    int fd;
    char user[6];
    buf_t in, out;
    unsigned char joined[MAX_ROOMS];
    int dirty; /* in the turn's list of sessions with output */
    int want_out; /* EPOLLOUT registered */
} conn_t;

typedef struct {
    char name[32];
    conn_t **members;
    int count, cap;
} room_t;

static room_t rooms[MAX_ROOMS];
static int room_count = 24;
static conn_t **dirty;
static int dirty_count, dirty_cap;
static int epfd;
static char *login_rooms; /* the "rs" list, built once */

static void reserve(buf_t *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) abort();
    b->cap = cap;
}

static void append(conn_t *c, const char *data, size_t len) {
    reserve(&c->out, len);
    memcpy(c->out.data + c->out.len, data, len);
    c->out.len += len;
    if (!c->dirty) {
        c->dirty = 1;
        if (dirty_count == dirty_cap) {
            dirty_cap = dirty_cap ? dirty_cap * 2 : 1024;
            dirty = realloc(dirty, sizeof(conn_t *) * dirty_cap);
            if (!dirty) abort();
        }
        dirty[dirty_count++] = c;
    }
}

static void to_room(room_t *r, const char *data, size_t len) {
    for (int i = 0; i < r->count; i++) append(r->members[i], data, len);
}

/* The value of "key":"..." in line (a JSON string, unescaped quotes end it), or NULL. */
static const char *field(const char *line, size_t len, const char *key, size_t *out_len) {
    const char *end = line + len;
    size_t klen = strlen(key);
    for (const char *p = line; p + klen < end; p++) {
        if (memcmp(p, key, klen) != 0) continue;
        const char *start = p + klen; /* just past the opening quote */
        for (const char *q = start; q < end; q++) {
            if (*q == '\\') { q++; continue; }
            if (*q == '"') { *out_len = (size_t)(q - start); return start; }
        }
        return NULL;
    }
    return NULL;
}

static int room_index(const char *name, size_t len) {
    if (len < 6 || len > 10 || memcmp(name, "room-", 5) != 0) return -1;
    int n = 0;
    for (size_t i = 5; i < len; i++) {
        if (name[i] < '0' || name[i] > '9') return -1;
        n = n * 10 + (name[i] - '0');
    }
    return n < room_count ? n : -1;
}

static void participation(room_t *r, conn_t *c, const char *what) {
    char line[160];
    int n = snprintf(line, sizeof line,
                     "{\"_et\":\"room_participation\",\"r\":\"%s\",\"u\":\"%s\",\"s\":\"%s\"}\r\n",
                     r->name, c->user, what);
    to_room(r, line, (size_t)n);
}

static void join(conn_t *c, int index) {
    room_t *r = &rooms[index];
    if (c->joined[index]) return;
    c->joined[index] = 1;
    if (r->count == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 8;
        r->members = realloc(r->members, sizeof(conn_t *) * r->cap);
        if (!r->members) abort();
    }
    r->members[r->count++] = c;
    buf_t list = {0};
    reserve(&list, 64 + (size_t)r->count * 8 + strlen(r->name));
    list.len = (size_t)sprintf(list.data, "{\"_et\":\"user_joined_room\",\"r\":\"%s\",\"us\":[",
                               r->name);
    for (int i = 0; i < r->count; i++)
        list.len += (size_t)sprintf(list.data + list.len, "%s\"%s\"", i ? "," : "",
                                    r->members[i]->user);
    memcpy(list.data + list.len, "]}\r\n", 4);
    list.len += 4;
    append(c, list.data, list.len);
    free(list.data);
    participation(r, c, "joined");
}

static void leave(conn_t *c, int index) {
    room_t *r = &rooms[index];
    if (!c->joined[index]) return;
    c->joined[index] = 0;
    for (int i = 0; i < r->count; i++)
        if (r->members[i] == c) { r->members[i] = r->members[--r->count]; break; }
    participation(r, c, "left");
}

static void message(conn_t *c, int index, const char *content, size_t len) {
    room_t *r = &rooms[index];
    if (!c->joined[index]) return;
    char head[96];
    int n = snprintf(head, sizeof head, "{\"_et\":\"user_message\",\"r\":\"%s\",\"u\":\"%s\",\"c\":\"",
                     r->name, c->user);
    for (int i = 0; i < r->count; i++) {
        conn_t *m = r->members[i];
        append(m, head, (size_t)n);
        append(m, content, len);
        append(m, "\"}\r\n", 4);
    }
}

static void command(conn_t *c, const char *line, size_t len) {
    size_t tlen, rlen, clen;
    const char *type = field(line, len, "\"_ct\":\"", &tlen);
    if (!type) return;
    const char *room = field(line, len, "\"r\":\"", &rlen);
    int index = room ? room_index(room, rlen) : -1;
    if (tlen == 12 && memcmp(type, "send_message", 12) == 0 && index >= 0) {
        const char *content = field(line, len, "\"c\":\"", &clen);
        if (content) message(c, index, content, clen);
    } else if (tlen == 9 && memcmp(type, "join_room", 9) == 0 && index >= 0) {
        join(c, index);
    } else if (tlen == 10 && memcmp(type, "leave_room", 10) == 0 && index >= 0) {
        leave(c, index);
    }
}

static void drop(conn_t *c) {
    for (int i = 0; i < room_count; i++) leave(c, i);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (!c->dirty) append(c, "", 0); /* freed at the end of the turn, with the writes */
}

static void on_readable(conn_t *c) {
    reserve(&c->in, READ_SIZE);
    ssize_t n = read(c->fd, c->in.data + c->in.len, READ_SIZE);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { drop(c); return; }
    if (n < 0) return;
    c->in.len += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < c->in.len; i++) {
        if (c->in.data[i] != '\n') continue;
        command(c, c->in.data + start, i - start);
        start = i + 1;
    }
    memmove(c->in.data, c->in.data + start, c->in.len - start);
    c->in.len -= start;
}

static void accept_all(int listener) {
    static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        if (!c) abort();
        c->fd = fd;
        for (int i = 0; i < 5; i++) c->user[i] = letters[random() % 62];
        char session[22];
        for (int i = 0; i < 21; i++) session[i] = letters[random() % 62];
        session[21] = 0;
        char head[128];
        int n = snprintf(head, sizeof head, "{\"_et\":\"login_successful\",\"s\":\"%s\",\"u\":\"%s\",\"rs\":",
                         session, c->user);
        append(c, head, (size_t)n);
        append(c, login_rooms, strlen(login_rooms));
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    }
}

static void flush_turn(void) {
    for (int i = 0; i < dirty_count; i++) {
        conn_t *c = dirty[i];
        c->dirty = 0;
        if (c->fd < 0) { free(c->in.data); free(c->out.data); free(c); continue; }
        ssize_t n = write(c->fd, c->out.data, c->out.len); /* one write per session */
        if (n > 0) {
            memmove(c->out.data, c->out.data + n, c->out.len - (size_t)n);
            c->out.len -= (size_t)n;
        }
        int want = c->out.len > 0;
        if (want != c->want_out) {
            struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
            epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
            c->want_out = want;
        }
    }
    dirty_count = 0;
}

int main(int argc, char **argv) {
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0) port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--rooms") == 0) room_count = atoi(argv[i + 1]);
    }
    if (room_count < 1 || room_count > MAX_ROOMS) { fprintf(stderr, "--rooms: 1..%d\n", MAX_ROOMS); return 2; }
    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)getpid());
    buf_t rs = {0};
    reserve(&rs, (size_t)room_count * 32 + 8);
    rs.len = (size_t)sprintf(rs.data, "[");
    for (int i = 0; i < room_count; i++) {
        snprintf(rooms[i].name, sizeof rooms[i].name, "room-%d", i);
        rs.len += (size_t)sprintf(rs.data + rs.len, "%s{\"n\":\"%s\",\"d\":\"\"}", i ? "," : "", rooms[i].name);
    }
    sprintf(rs.data + rs.len, "]}\r\n");
    login_rooms = rs.data;

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 4096) < 0) {
        perror("limit: listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(listener, (struct sockaddr *)&addr, &alen);
    fprintf(stderr, "limit: listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stderr);

    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev);
    struct epoll_event events[1024];
    for (;;) {
        int n = epoll_wait(epfd, events, 1024, -1);
        if (n < 0 && errno != EINTR) { perror("limit: epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c == NULL) { accept_all(listener); continue; }
            if (c->fd < 0) continue;
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
            if (c->fd >= 0 && (events[i].events & EPOLLOUT) && !c->dirty && c->out.len)
                append(c, "", 0); /* into this turn's writes */
        }
        flush_turn();
    }
}
