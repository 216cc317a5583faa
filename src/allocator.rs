//! The memory allocator of the `fieldsync` binary and its benchmark: jemalloc
//! (`tikv-jemallocator`, a well-kept binding used by TiKV and others), tuned to hand freed
//! memory back to the system.
//!
//! Why not glibc's malloc: a CPU profile of a 100,000-record import (`perf record` on the
//! release build, session 11) spent ~27 % of its samples in glibc's `malloc`/`free` and their
//! consolidation, because sled and the merge allocate and free many small nodes and values.
//! With jemalloc, measured side by side on the same machine (`bench/disk-probe/run.sh`, two
//! runs each, interleaved, 100,000 gen.py records): the import took 2.9–4.1 s instead of
//! 5.8–6.0 s and the initial sync 4.4–5.5 s instead of 7.0–7.9 s, with peak resident memory
//! 84–88 / 100–103 MB (sender / receiver) against glibc's 76–78 / 101–108 MB. mimalloc was
//! tried as well: as fast, but it kept 40–150 MB more resident at every setting tried.
//!
//! The binary links glibc statically (`.cargo/config.toml`); jemalloc is compiled into it, so
//! the binary stays one static file. C libraries inside it (zstd) still use glibc's malloc.

pub use tikv_jemallocator::Jemalloc;

/// jemalloc's run-time options, fixed at build time (jemalloc reads them before `main`):
/// - `background_thread:true`: a thread of jemalloc's own returns freed pages to the system,
///   so an idle agent shrinks without a call from us;
/// - `dirty_decay_ms:100`, `muzzy_decay_ms:0`: freed pages go back after ~0.1 s (jemalloc's
///   default keeps them 10 s, which held the peak of one sync page into the next);
/// - `narenas:1`: one arena: the agent's threads (tokio's two workers, its blocking pool,
///   sled's flusher and I/O threads) otherwise each kept their own free memory. Measured: two
///   arenas raised the receiver's peak by ~25 MB.
/// - `tcache_max:256`, `tcache_nslots_small_max:8`, `tcache_nslots_large:2`: small per-thread
///   caches (objects up to 256 bytes, at most 8 of a size). A thread's cache is only trimmed
///   when that thread allocates again, and an idle agent has ~18 threads (eight of them sled's
///   `sled-io-N`) whose cached objects each pin a page of the arena. With jemalloc's default
///   cache sizes (and `tcache_max:1024`) the receiver idled at 51–57 MB after the benchmark's
///   100,000-record sync, over the 40 MB target (glibc's malloc: 38.6 MB); with these, 35–38 MB
///   in three runs, and the import and initial sync took as long as with the default caches
///   within this machine's noise (`_RJEM_MALLOC_CONF` runs of bench/RESULTS.md, session 11).
///
/// Any `_RJEM_MALLOC_CONF` in the environment is read after these and wins.
pub const JEMALLOC_CONF: &std::ffi::CStr = c"background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0,narenas:1,tcache_max:256,tcache_nslots_small_max:8,tcache_nslots_large:2";

/// Makes jemalloc with [`JEMALLOC_CONF`] the global allocator of the crate that invokes it
/// (the `fieldsync` binary and the benchmark; library users choose their own). Expands to two
/// statics: the `#[global_allocator]` and the `malloc_conf` string jemalloc looks up by name.
#[macro_export]
macro_rules! use_jemalloc {
    () => {
        #[global_allocator]
        static GLOBAL_ALLOCATOR: $crate::allocator::Jemalloc = $crate::allocator::Jemalloc;

        /// jemalloc's build-time options string, found by its symbol name (prefixed `_rjem_`
        /// as tikv-jemalloc-sys builds it on Linux).
        #[allow(non_upper_case_globals)]
        #[export_name = "_rjem_malloc_conf"]
        static malloc_conf: Option<&'static std::ffi::c_char> =
            // SAFETY: the pointer is to the first byte of a 'static, NUL-terminated string.
            Some(unsafe { &*$crate::allocator::JEMALLOC_CONF.as_ptr() });
    };
}
