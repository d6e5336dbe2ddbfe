//! The C functions of csrc/c10d.cpp as owned handles with `Result<_, String>` methods (the
//! string is c10d's own message). Built without gloo's headers, the same types exist but
//! cannot be made: every constructor answers [`NO_C10D`].
/// What every call answers in a build made without gloo's headers.
pub const NO_C10D: &str =
    "this build has no c10d (distributed training): install gloo's headers (scripts/setup-gloo.sh, or apt-get install libgloo-dev) and rebuild";

#[cfg(ti_c10d)]
pub use real::*;
#[cfg(not(ti_c10d))]
pub use stub::*;

#[cfg(ti_c10d)]
mod real {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::ptr::{self, NonNull};
    use std::time::Duration;
    use tch::Tensor;

    #[repr(C)]
    struct TiStore(c_void);
    #[repr(C)]
    struct TiPg(c_void);
    #[repr(C)]
    struct TiWork(c_void);
    type Tens = torch_sys::C_tensor;

    fn millis(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
    }

    extern "C" {
        fn ti_c10d_free(p: *mut c_void);
        fn ti_c10d_store_create(
            host: *const c_char,
            port: c_int,
            is_server: c_int,
            world_size: c_int,
            wait_workers: c_int,
            timeout_ms: i64,
            prefix: *const c_char,
            out: *mut *mut TiStore,
        ) -> *mut c_char;
        fn ti_c10d_store_prefixed(store: *mut TiStore, prefix: *const c_char, out: *mut *mut TiStore) -> *mut c_char;
        fn ti_c10d_store_clone(store: *mut TiStore, out: *mut *mut TiStore) -> *mut c_char;
        fn ti_c10d_store_destroy(store: *mut TiStore);
        fn ti_c10d_store_set(store: *mut TiStore, key: *const c_char, data: *const u8, len: usize) -> *mut c_char;
        fn ti_c10d_store_get(store: *mut TiStore, key: *const c_char, data: *mut *mut u8, len: *mut usize) -> *mut c_char;
        fn ti_c10d_store_add(store: *mut TiStore, key: *const c_char, delta: i64, value: *mut i64) -> *mut c_char;
        fn ti_c10d_store_check(store: *mut TiStore, keys: *const *const c_char, n: usize, present: *mut c_int) -> *mut c_char;
        fn ti_c10d_pg_create(
            store: *mut TiStore,
            rank: c_int,
            size: c_int,
            timeout_ms: i64,
            interfaces: *const c_char,
            hostname: *const c_char,
            out: *mut *mut TiPg,
        ) -> *mut c_char;
        fn ti_c10d_pg_destroy(pg: *mut TiPg);
        fn ti_c10d_allreduce_sum(pg: *mut TiPg, tensor: *mut Tens, out: *mut *mut TiWork) -> *mut c_char;
        fn ti_c10d_broadcast(pg: *mut TiPg, tensor: *mut Tens, root: c_int, out: *mut *mut TiWork) -> *mut c_char;
        fn ti_c10d_allgather(pg: *mut TiPg, input: *mut Tens, outputs: *const *mut Tens, n: usize, out: *mut *mut TiWork) -> *mut c_char;
        fn ti_c10d_barrier(pg: *mut TiPg, out: *mut *mut TiWork) -> *mut c_char;
        fn ti_c10d_work_wait(work: *mut TiWork, slice_ms: i64, done: *mut c_int) -> *mut c_char;
        fn ti_c10d_work_destroy(work: *mut TiWork);
    }

    /// Turns a returned error (malloc'ed, NULL on success) into a Result and frees it.
    fn check(err: *mut c_char) -> Result<(), String> {
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is a NUL-terminated string from malloc, owned by us now.
        let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { ti_c10d_free(err.cast()) };
        Err(message)
    }

    fn c_string(what: &str, s: &str) -> Result<CString, String> {
        CString::new(s).map_err(|_| format!("{what} {s:?} holds a NUL byte"))
    }

    fn handle<T>(p: *mut T, what: &str) -> Result<NonNull<T>, String> {
        NonNull::new(p).ok_or_else(|| format!("c10d returned no {what}"))
    }

    /// A c10d store: a TCPStore, possibly behind PrefixStores.
    pub struct RawStore(NonNull<TiStore>);

    // SAFETY: c10d's TCPStore serialises its calls on one connection with a lock; the handle
    // is only read after creation.
    unsafe impl Send for RawStore {}
    unsafe impl Sync for RawStore {}

    impl RawStore {
        /// `port` 0 is refused by the caller; `prefix` may be empty.
        #[allow(clippy::too_many_arguments)]
        pub fn create(host: &str, port: u16, is_server: bool, world_size: usize, wait_workers: bool, timeout: Duration, prefix: &str) -> Result<Self, String> {
            let host = c_string("the store host", host)?;
            let prefix = c_string("the store prefix", prefix)?;
            let world = c_int::try_from(world_size).map_err(|_| format!("world size {world_size} is too large"))?;
            let mut out = ptr::null_mut();
            // SAFETY: valid C strings for the call; `out` is written on success only.
            check(unsafe {
                ti_c10d_store_create(
                    host.as_ptr(),
                    c_int::from(port),
                    c_int::from(is_server),
                    world,
                    c_int::from(wait_workers),
                    millis(timeout),
                    prefix.as_ptr(),
                    &mut out,
                )
            })?;
            Ok(RawStore(handle(out, "store")?))
        }

        /// The same store with every key under `prefix`.
        pub fn prefixed(&self, prefix: &str) -> Result<Self, String> {
            let prefix = c_string("the store prefix", prefix)?;
            let mut out = ptr::null_mut();
            // SAFETY: self is a live handle; `out` is written on success only.
            check(unsafe { ti_c10d_store_prefixed(self.0.as_ptr(), prefix.as_ptr(), &mut out) })?;
            Ok(RawStore(handle(out, "store")?))
        }

        /// A second connection to the same store (same prefix).
        pub fn new_connection(&self) -> Result<Self, String> {
            let mut out = ptr::null_mut();
            // SAFETY: as above.
            check(unsafe { ti_c10d_store_clone(self.0.as_ptr(), &mut out) })?;
            Ok(RawStore(handle(out, "store")?))
        }

        pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            let key = c_string("the store key", key)?;
            // SAFETY: the slice is valid for its length during the call.
            check(unsafe { ti_c10d_store_set(self.0.as_ptr(), key.as_ptr(), value.as_ptr(), value.len()) })
        }

        /// Blocks until the key exists, up to the store's timeout.
        pub fn get(&self, key: &str) -> Result<Vec<u8>, String> {
            let key = c_string("the store key", key)?;
            let mut data: *mut u8 = ptr::null_mut();
            let mut len = 0usize;
            // SAFETY: on success `data` is a malloc'ed buffer of `len` bytes that we copy and free.
            check(unsafe { ti_c10d_store_get(self.0.as_ptr(), key.as_ptr(), &mut data, &mut len) })?;
            if data.is_null() {
                return Err("c10d returned no value".into());
            }
            let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
            unsafe { ti_c10d_free(data.cast()) };
            Ok(value)
        }

        /// Adds `delta` to the integer at `key` (0 when absent); returns the new value.
        pub fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
            let key = c_string("the store key", key)?;
            let mut value = 0i64;
            // SAFETY: plain out-parameter.
            check(unsafe { ti_c10d_store_add(self.0.as_ptr(), key.as_ptr(), delta, &mut value) })?;
            Ok(value)
        }

        /// Whether every key exists now.
        pub fn check(&self, keys: &[String]) -> Result<bool, String> {
            let keys = keys.iter().map(|k| c_string("the store key", k)).collect::<Result<Vec<_>, _>>()?;
            let ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
            let mut present: c_int = 0;
            // SAFETY: `ptrs` points into `keys`, both alive for the call.
            check(unsafe { ti_c10d_store_check(self.0.as_ptr(), ptrs.as_ptr(), ptrs.len(), &mut present) })?;
            Ok(present != 0)
        }
    }

    impl Drop for RawStore {
        fn drop(&mut self) {
            // SAFETY: created by ti_c10d_store_*, destroyed once.
            unsafe { ti_c10d_store_destroy(self.0.as_ptr()) }
        }
    }

    /// A ProcessGroupGloo.
    pub struct RawPg(NonNull<TiPg>);

    // SAFETY: ProcessGroupGloo queues work under its own lock; the handle itself is not mutated.
    unsafe impl Send for RawPg {}

    /// One collective in flight.
    pub struct RawWork(NonNull<TiWork>);

    impl RawPg {
        pub fn create(store: &RawStore, rank: usize, size: usize, timeout: Duration, interfaces: &str, hostname: &str) -> Result<Self, String> {
            let interfaces = c_string("GLOO_SOCKET_IFNAME", interfaces)?;
            let hostname = c_string("the host name", hostname)?;
            let rank = c_int::try_from(rank).map_err(|_| format!("rank {rank} is too large"))?;
            let size = c_int::try_from(size).map_err(|_| format!("world size {size} is too large"))?;
            let mut out = ptr::null_mut();
            // SAFETY: live store handle, valid C strings; `out` is written on success only.
            check(unsafe { ti_c10d_pg_create(store.0.as_ptr(), rank, size, millis(timeout), interfaces.as_ptr(), hostname.as_ptr(), &mut out) })?;
            Ok(RawPg(handle(out, "process group")?))
        }

        /// In-place SUM over the ranks; `tensor` must be a contiguous CPU tensor.
        pub fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<RawWork, String> {
            let mut out = ptr::null_mut();
            // SAFETY: the tensor handle is valid; c10d keeps its own reference to the storage.
            check(unsafe { ti_c10d_allreduce_sum(self.0.as_ptr(), tensor.as_mut_ptr(), &mut out) })?;
            Ok(RawWork(handle(out, "work")?))
        }

        pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<RawWork, String> {
            let root = c_int::try_from(root).map_err(|_| format!("root rank {root} is too large"))?;
            let mut out = ptr::null_mut();
            // SAFETY: as above.
            check(unsafe { ti_c10d_broadcast(self.0.as_ptr(), tensor.as_mut_ptr(), root, &mut out) })?;
            Ok(RawWork(handle(out, "work")?))
        }

        /// `outputs` has one tensor per rank, each shaped as `input`.
        pub fn all_gather(&self, input: &mut Tensor, outputs: &mut [Tensor]) -> Result<RawWork, String> {
            let ptrs: Vec<*mut Tens> = outputs.iter_mut().map(|t| t.as_mut_ptr()).collect();
            let mut out = ptr::null_mut();
            // SAFETY: every pointer is a live tensor handle for the call.
            check(unsafe { ti_c10d_allgather(self.0.as_ptr(), input.as_mut_ptr(), ptrs.as_ptr(), ptrs.len(), &mut out) })?;
            Ok(RawWork(handle(out, "work")?))
        }

        pub fn barrier(&self) -> Result<RawWork, String> {
            let mut out = ptr::null_mut();
            // SAFETY: as above.
            check(unsafe { ti_c10d_barrier(self.0.as_ptr(), &mut out) })?;
            Ok(RawWork(handle(out, "work")?))
        }
    }

    impl Drop for RawPg {
        fn drop(&mut self) {
            // SAFETY: created by ti_c10d_pg_create, destroyed once.
            unsafe { ti_c10d_pg_destroy(self.0.as_ptr()) }
        }
    }

    impl RawWork {
        /// Waits up to `slice`: Ok(true) when the work finished, Ok(false) when it still runs,
        /// Err with c10d's message when it failed.
        pub fn wait(&self, slice: Duration) -> Result<bool, String> {
            let mut done: c_int = 0;
            // SAFETY: live work handle, plain out-parameter.
            check(unsafe { ti_c10d_work_wait(self.0.as_ptr(), millis(slice), &mut done) })?;
            Ok(done != 0)
        }
    }

    impl Drop for RawWork {
        fn drop(&mut self) {
            // SAFETY: created by a collective, destroyed once.
            unsafe { ti_c10d_work_destroy(self.0.as_ptr()) }
        }
    }
}

#[cfg(not(ti_c10d))]
mod stub {
    use super::NO_C10D;
    use std::convert::Infallible;
    use std::time::Duration;
    use tch::Tensor;

    pub struct RawStore(Infallible);
    pub struct RawPg(Infallible);
    pub struct RawWork(Infallible);

    impl RawStore {
        #[allow(clippy::too_many_arguments)]
        pub fn create(_: &str, _: u16, _: bool, _: usize, _: bool, _: Duration, _: &str) -> Result<Self, String> {
            Err(NO_C10D.to_string())
        }
        pub fn prefixed(&self, _: &str) -> Result<Self, String> {
            match self.0 {}
        }
        pub fn new_connection(&self) -> Result<Self, String> {
            match self.0 {}
        }
        pub fn set(&self, _: &str, _: &[u8]) -> Result<(), String> {
            match self.0 {}
        }
        pub fn get(&self, _: &str) -> Result<Vec<u8>, String> {
            match self.0 {}
        }
        pub fn add(&self, _: &str, _: i64) -> Result<i64, String> {
            match self.0 {}
        }
        pub fn check(&self, _: &[String]) -> Result<bool, String> {
            match self.0 {}
        }
    }

    impl RawPg {
        pub fn create(store: &RawStore, _: usize, _: usize, _: Duration, _: &str, _: &str) -> Result<Self, String> {
            match store.0 {}
        }
        pub fn all_reduce_sum(&self, _: &mut Tensor) -> Result<RawWork, String> {
            match self.0 {}
        }
        pub fn broadcast(&self, _: &mut Tensor, _: usize) -> Result<RawWork, String> {
            match self.0 {}
        }
        pub fn all_gather(&self, _: &mut Tensor, _: &mut [Tensor]) -> Result<RawWork, String> {
            match self.0 {}
        }
        pub fn barrier(&self) -> Result<RawWork, String> {
            match self.0 {}
        }
    }

    impl RawWork {
        pub fn wait(&self, _: Duration) -> Result<bool, String> {
            match self.0 {}
        }
    }
}
