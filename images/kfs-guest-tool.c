/*
 * kfs-guest-tool: the few system calls guest test scripts need that busybox lacks.
 * Built static by images/build.sh and put in the initramfs as /bin/kfs-guest-tool.
 *
 *   kfs-guest-tool setxattr FILE NAME VALUE
 *   kfs-guest-tool getxattr FILE NAME          prints the value
 *   kfs-guest-tool listxattr FILE              prints names, one per line, sorted by the kernel's order
 *   kfs-guest-tool removexattr FILE NAME
 *   kfs-guest-tool fsync FILE | fdatasync FILE
 *   kfs-guest-tool pwrite FILE OFFSET TEXT      writes TEXT at OFFSET (no truncation)
 *   kfs-guest-tool punch FILE OFFSET LEN        fallocate(PUNCH_HOLE|KEEP_SIZE)
 * Benchmark steps (print "<seconds> <count>" on success), so a guest benchmark measures the
 * filesystem rather than busybox process start-up under TCG:
 *   kfs-guest-tool mkfiles DIR COUNT SIZE       COUNT files of SIZE bytes in DIR (created)
 *   kfs-guest-tool statall DIR                  lstat every entry below DIR
 *   kfs-guest-tool readall DIR                  read every regular file below DIR
 *   kfs-guest-tool seqwrite FILE MIB            write MIB MiB in 1 MiB writes, then fsync
 *   kfs-guest-tool seqread FILE                 read FILE in 1 MiB reads
 *   kfs-guest-tool randread FILE COUNT          COUNT 4 KiB preads at pseudo-random aligned offsets
 *   kfs-guest-tool rmtree DIR                   unlink everything below DIR, and DIR
 * Exit status 0 on success; on failure a line "ERR <call> <errno name>" and status 1.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <time.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

static int fail(const char *call) {
  printf("ERR %s %s\n", call, strerrorname_np(errno) ? strerrorname_np(errno) : "?");
  return 1;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char iobuf[1 << 20];
static long long walked;

static int stat_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
  (void)p; (void)st; (void)flag; (void)f;
  walked++;
  return 0;
}

static int read_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
  (void)f;
  if (flag != FTW_F || !S_ISREG(st->st_mode)) return 0;
  int fd = open(p, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n;
  while ((n = read(fd, iobuf, sizeof iobuf)) > 0) {}
  close(fd);
  walked++;
  return n < 0 ? -1 : 0;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
  (void)st; (void)f;
  walked++;
  return (flag == FTW_DP ? rmdir(p) : unlink(p));
}

static int bench(int argc, char **argv) {
  const char *cmd = argv[1], *path = argv[2];
  double t0 = now();
  long long count = 0;
  if (!strcmp(cmd, "mkfiles") && argc == 5) {
    long long n = atoll(argv[3]);
    size_t size = (size_t)atoll(argv[4]);
    if (size > sizeof iobuf) size = sizeof iobuf;
    memset(iobuf, 'k', size);
    if (mkdir(path, 0755) && errno != EEXIST) return fail("mkdir");
    char name[4096];
    for (count = 0; count < n; count++) {
      snprintf(name, sizeof name, "%s/f%06lld", path, count);
      int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) return fail("open");
      if (write(fd, iobuf, size) != (ssize_t)size) return fail("write");
      close(fd);
    }
  } else if (!strcmp(cmd, "statall") && argc == 3) {
    walked = 0;
    if (nftw(path, stat_one, 64, FTW_PHYS)) return fail("nftw");
    count = walked;
  } else if (!strcmp(cmd, "readall") && argc == 3) {
    walked = 0;
    if (nftw(path, read_one, 64, FTW_PHYS)) return fail("read");
    count = walked;
  } else if (!strcmp(cmd, "rmtree") && argc == 3) {
    walked = 0;
    if (nftw(path, rm_one, 64, FTW_PHYS | FTW_DEPTH)) return fail("rm");
    count = walked;
  } else if (!strcmp(cmd, "seqwrite") && argc == 4) {
    long long mib = atoll(argv[3]);
    memset(iobuf, 's', sizeof iobuf);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return fail("open");
    for (count = 0; count < mib; count++) if (write(fd, iobuf, sizeof iobuf) != (ssize_t)sizeof iobuf) return fail("write");
    if (fsync(fd)) return fail("fsync");
    close(fd);
  } else if (!strcmp(cmd, "seqread") && argc == 3) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail("open");
    ssize_t n;
    while ((n = read(fd, iobuf, sizeof iobuf)) > 0) count += n;
    if (n < 0) return fail("read");
    close(fd);
  } else if (!strcmp(cmd, "randread") && argc == 4) {
    long long n = atoll(argv[3]);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail("open");
    struct stat st;
    if (fstat(fd, &st)) return fail("fstat");
    long long blocks = st.st_size / 4096;
    if (blocks == 0) return fail("size");
    unsigned long long x = 88172645463325252ULL; /* xorshift64: the same offsets every run */
    for (count = 0; count < n; count++) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      if (pread(fd, iobuf, 4096, (off_t)(x % (unsigned long long)blocks) * 4096) != 4096) return fail("pread");
    }
    close(fd);
  } else {
    return -1;
  }
  printf("%.6f %lld\n", now() - t0, count);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: kfs-guest-tool CMD FILE [ARGS]\n");
    return 2;
  }
  const char *cmd = argv[1], *file = argv[2];
  int b = bench(argc, argv);
  if (b >= 0) return b;
  if (!strcmp(cmd, "setxattr") && argc == 5) {
    if (setxattr(file, argv[3], argv[4], strlen(argv[4]), 0)) return fail("setxattr");
    return 0;
  }
  if (!strcmp(cmd, "getxattr") && argc == 4) {
    char buf[65536];
    ssize_t n = getxattr(file, argv[3], buf, sizeof buf);
    if (n < 0) return fail("getxattr");
    fwrite(buf, 1, (size_t)n, stdout);
    putchar('\n');
    return 0;
  }
  if (!strcmp(cmd, "listxattr") && argc == 3) {
    char buf[65536];
    ssize_t n = listxattr(file, buf, sizeof buf);
    if (n < 0) return fail("listxattr");
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1) puts(buf + i);
    return 0;
  }
  if (!strcmp(cmd, "removexattr") && argc == 4) {
    if (removexattr(file, argv[3])) return fail("removexattr");
    return 0;
  }
  if ((!strcmp(cmd, "fsync") || !strcmp(cmd, "fdatasync")) && argc == 3) {
    int fd = open(file, O_RDONLY);
    if (fd < 0) return fail("open");
    if ((cmd[1] == 's' ? fsync(fd) : fdatasync(fd))) return fail(cmd);
    return close(fd) ? fail("close") : 0;
  }
  if (!strcmp(cmd, "pwrite") && argc == 5) {
    int fd = open(file, O_WRONLY);
    if (fd < 0) return fail("open");
    size_t len = strlen(argv[4]);
    if (pwrite(fd, argv[4], len, strtoll(argv[3], NULL, 0)) != (ssize_t)len) return fail("pwrite");
    return close(fd) ? fail("close") : 0;
  }
  if (!strcmp(cmd, "punch") && argc == 5) {
    int fd = open(file, O_WRONLY);
    if (fd < 0) return fail("open");
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, strtoll(argv[3], NULL, 0), strtoll(argv[4], NULL, 0))) return fail("fallocate");
    return close(fd) ? fail("close") : 0;
  }
  fprintf(stderr, "kfs-guest-tool: unknown command or wrong arguments: %s\n", cmd);
  return 2;
}
