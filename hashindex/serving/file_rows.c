/* Rows of a file read by position, one pread each, in one call (FileRows.take in store.py).
 *
 * A search over a loaded compact-store index rescores ~3k float rows per query from the index's
 * file through the page cache (never mapped: see FileRows). From Python each pread costs ~1.2 us,
 * most of it the interpreter around the system call; here the loop runs in C.
 */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

/* Reads rows positions[0..n) of row_bytes each, the file's row p at offset + p * row_bytes, into
 * out (n * row_bytes). Returns n when every row was read whole, else the index of the first row
 * that was not (a short read: the file was truncated), or -1 - errno on a failed read. */
int64_t hx_pread_rows(int fd, int64_t offset, int64_t row_bytes, const int64_t *positions, int64_t n, uint8_t *out) {
    for (int64_t i = 0; i < n; i++) {
        uint8_t *dst = out + i * row_bytes;
        int64_t got = 0;
        while (got < row_bytes) { /* a read may return fewer bytes than asked (signals) */
            ssize_t r = pread(fd, dst + got, (size_t)(row_bytes - got), (off_t)(offset + positions[i] * row_bytes + got));
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) return -1 - errno;
            if (r == 0) return i;
            got += r;
        }
    }
    return n;
}
