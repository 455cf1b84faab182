/* Shares a job's chunks between the calling thread and threads - 1 helpers that claim chunks as they come.
 *
 * Not an OpenMP fork/join: the caller never waits for a helper to arrive, only for chunks a helper has claimed, so
 * on a shared CPU where a helper is not scheduled the caller does all the work itself at one thread's speed (an
 * OpenMP barrier would wait for the sleeping thread: 10x slower steps). Helpers spin briefly between jobs (a decode
 * step's jobs follow each other within microseconds), then sleep on a condition variable.
 *
 * A helper that claimed a chunk and was then descheduled still makes the caller wait for that chunk, up to a
 * scheduler time slice: when the caller waits longer than WAIT_LIMIT_NS at the end of a job a second time within
 * SOLO_JOBS jobs (the CPU is shared), it runs the next SOLO_JOBS jobs (about one decode step) alone, then tries the
 * helpers again. A single long wait is let pass: a virtual machine's vCPU is taken away now and then for a few
 * milliseconds, and a step run alone for that costs ten times more (16-stream decode on a 2-core VM: ~8 such
 * waits a run, each 1-4 ms).
 *
 * claim packs the job's generation (high 32 bits) and its next unclaimed chunk (low 32 bits): a helper that
 * wakes late fails its compare-and-swap on an old generation instead of running a chunk of a finished job, and it
 * reads the job only after claiming a chunk of it, which the caller cannot finish before that chunk is done.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PAUSE() _mm_pause()
#else
#define PAUSE() ((void)0)
#endif

#include "lq_kernels.h"

enum { MAX_HELPERS = 63, SPIN_ROUNDS = 4000, SOLO_JOBS = 150 };
static const int64_t WAIT_LIMIT_NS = 500000;

static struct {
    lq_chunk_fn fn;
    void *ctx;
    int64_t chunks;
} job;
static _Atomic uint64_t claim;
static _Atomic int64_t finished;
static _Atomic int sleepers;
static _Atomic int active;   /* helpers 0..active-1 take part in the current job */
static int helpers;
static int64_t solo_jobs;   /* jobs the caller still runs alone after a helper kept it waiting */
static int64_t since_long_wait = SOLO_JOBS;   /* parallel jobs since a helper last kept the caller waiting */
static atomic_flag in_use = ATOMIC_FLAG_INIT;   /* one job at a time: a second calling thread runs its own alone */

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

static void run_chunks(uint32_t gen) {
    for (;;) {
        uint64_t c = atomic_load(&claim);
        if ((uint32_t)(c >> 32) != gen || (int64_t)(c & 0xFFFFFFFFu) >= job.chunks) return;
        if (atomic_compare_exchange_weak(&claim, &c, c + 1)) {
            job.fn(job.ctx, (int64_t)(c & 0xFFFFFFFFu));
            atomic_fetch_add(&finished, 1);
        }
    }
}

static void *helper_main(void *arg) {
    int index = (int)(intptr_t)arg;
    uint32_t seen = (uint32_t)(atomic_load(&claim) >> 32);
    for (;;) {
        uint32_t gen = seen;
        for (int i = 0; i < SPIN_ROUNDS && gen == seen; i++) {
            PAUSE();
            gen = (uint32_t)(atomic_load(&claim) >> 32);
        }
        if (gen == seen) {
            pthread_mutex_lock(&lock);
            atomic_fetch_add(&sleepers, 1);
            while ((gen = (uint32_t)(atomic_load(&claim) >> 32)) == seen) pthread_cond_wait(&wake, &lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&lock);
        }
        seen = gen;
        if (index < atomic_load(&active)) run_chunks(gen);
    }
    return NULL;
}

/* A forked child has none of the parent's helpers: it starts its own on its first job. */
static void forget_helpers(void) {
    helpers = 0;
    atomic_store(&sleepers, 0);
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&wake, NULL);
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, forget_helpers); }

static void run_alone(lq_chunk_fn fn, void *ctx, int64_t chunks) {
    for (int64_t i = 0; i < chunks; i++) fn(ctx, i);
}

/* Runs fn(ctx, chunk) for every chunk < chunks on up to `threads` threads (the caller one of them); returns when
 * all are done. */
void lq_parallel(lq_chunk_fn fn, void *ctx, int64_t chunks, int threads) {
    if (threads > MAX_HELPERS + 1) threads = MAX_HELPERS + 1;
    if (threads <= 1 || chunks <= 1) {
        run_alone(fn, ctx, chunks);
        return;
    }
    if (atomic_flag_test_and_set(&in_use)) {   /* another thread's job is running */
        run_alone(fn, ctx, chunks);
        return;
    }
    if (solo_jobs > 0) {
        solo_jobs--;
        run_alone(fn, ctx, chunks);
        atomic_flag_clear(&in_use);
        return;
    }
    static pthread_once_t at_fork = PTHREAD_ONCE_INIT;
    pthread_once(&at_fork, register_fork_handler);
    while (helpers < threads - 1) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, helper_main, (void *)(intptr_t)helpers) != 0) break;
        pthread_detach(thread);
        helpers++;
    }
    job.fn = fn;
    job.ctx = ctx;
    job.chunks = chunks;
    atomic_store(&finished, 0);
    atomic_store(&active, threads - 1);
    uint32_t gen = (uint32_t)(atomic_load(&claim) >> 32) + 1;
    atomic_store(&claim, (uint64_t)gen << 32);
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&lock);
    }
    run_chunks(gen);
    if (atomic_load(&finished) < chunks) {
        int64_t start = now_ns();
        while (atomic_load(&finished) < chunks) PAUSE();
        if (now_ns() - start > WAIT_LIMIT_NS) {
            if (since_long_wait < SOLO_JOBS) solo_jobs = SOLO_JOBS;
            since_long_wait = 0;
        }
    }
    if (since_long_wait < SOLO_JOBS) since_long_wait++;
    atomic_flag_clear(&in_use);
}
