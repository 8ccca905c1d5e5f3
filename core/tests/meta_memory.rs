//! The heap a parsed meta holds, measured by a global allocator wrapper
//! that keeps, per thread, the bytes currently allocated and their peak.
//!
//! The bound (`Meta`'s docs): a parse holds at most
//! `4 + len + len / 128 + 2 × pairs` bytes, never more than
//! `2 × len + len / 128 + 6`; the fast proto refuses a meta of more than
//! `Meta::MAX_PAIRS` pairs before building any. Before this bound, a 1 MiB
//! frame whose meta is `a&` repeated cost 41 MiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use teleport_core::bytes::{BufMut, BytesMut};
use teleport_core::{FastProto, Meta, Proto, ProtoError};

/// Forwards every call to [`System`] and keeps, per thread, the bytes this
/// thread holds (allocated here, not yet freed here) and their peak.
struct Counting;

thread_local! {
    // `const`-initialised and without a destructor: an access is a plain
    // read of a thread-local static, which never allocates.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    // `try_with` fails only for a key whose destructor has run; these have
    // none, but the count is not worth a panic inside the allocator.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + n;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// implements `GlobalAlloc` soundly, and returns `System`'s result unchanged,
// so each method meets exactly the contract `System` meets. The only extra
// work is `add`, arithmetic on thread-local `Cell`s that does not allocate
// (so it cannot re-enter the allocator), cannot panic or unwind, and does
// not touch the memory being managed.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `alloc`'s contract, which we pass on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`,
        // with `layout`; the rest of the contract is our caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What `f` returns, the bytes this thread holds after it that it did not
/// hold before (what the result keeps), and the peak above the start
/// while it ran.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let held = LIVE.with(Cell::get) - start;
    let peak = PEAK.with(Cell::get) - start;
    (out, held.max(0) as usize, peak.max(0) as usize)
}

/// The most heap a meta parsed from `len` bytes into `pairs` pairs holds.
fn bound(len: usize, pairs: usize) -> usize {
    4 + len + len / 128 + 2 * pairs
}

/// The 1 MiB meta of the report: `a&` 524,256 times.
fn a_meta() -> Vec<u8> {
    b"a&".repeat(524_256)
}

/// One frame (a PULL to `/x`, string codec, no body) carrying `meta`.
fn frame_with_meta(meta: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    f.put_u32((6 + 8 + 1 + 4 + 2 + 4 + meta.len() + 1) as u32);
    f.put_u8(b'f');
    f.put_u8(0);
    f.put_u64(1);
    f.put_u8(1);
    f.put_u32(2);
    f.put_slice(b"/x");
    f.put_u32(meta.len() as u32);
    f.put_slice(meta);
    f.put_u8(b's');
    f
}

#[test]
fn the_counter_counts() {
    let (v, held, peak) = measure(|| {
        drop(std::hint::black_box(vec![0u8; 1000]));
        std::hint::black_box(vec![0u8; 100])
    });
    assert_eq!((held, peak), (100, 1000));
    drop(v);
}

#[test]
fn a_megabyte_of_tiny_pairs_holds_its_stated_bound() {
    let src = a_meta();
    let (m, held, peak) = measure(|| Meta::parse(&src));
    assert_eq!(m.len(), 524_256);
    assert!(m.iter().all(|(k, v)| k == b"a" && v.is_empty()));
    let bound = bound(src.len(), m.len());
    assert!(held <= bound, "holds {held} bytes, bound {bound}");
    assert!(held <= 2 * src.len() + src.len() / 128 + 6);
    // Nothing beyond what it keeps was allocated on the way.
    assert_eq!(peak, held, "peak {peak}, held {held}");
}

#[test]
fn the_fast_proto_refuses_that_meta_without_building_it() {
    let mut src = frame_with_meta(&a_meta());
    let frame_len = src.len();
    let mut proto = FastProto::default();
    let (r, _, peak) = measure(|| proto.decode(&mut src));
    assert_eq!(
        r,
        Err(ProtoError::TooManyMetaPairs {
            count: 524_256,
            limit: Meta::MAX_PAIRS
        })
    );
    // The frame (over 64 KiB, so copied into an allocation of its own rather
    // than keeping the read buffer alive) is counted; no pair is built.
    assert!(peak < frame_len + 1024, "{peak} bytes allocated");
}

#[test]
fn the_pair_cap_is_exact() {
    let at_cap = b"k=v&".repeat(Meta::MAX_PAIRS);
    let (m, held, _) = measure(|| Meta::try_parse(&at_cap).unwrap());
    assert_eq!(m.len(), Meta::MAX_PAIRS);
    assert!(held <= bound(at_cap.len(), Meta::MAX_PAIRS), "{held} bytes");
    // Dropped segments (empty, or `=` alone) do not count.
    let padded = [&at_cap[..], b"&&=&=&"].concat();
    assert_eq!(Meta::try_parse(&padded).unwrap(), m);
    let over = [&at_cap[..], b"x"].concat();
    let (r, _, peak) = measure(|| Meta::try_parse(&over));
    assert_eq!(
        r,
        Err(ProtoError::TooManyMetaPairs {
            count: Meta::MAX_PAIRS + 1,
            limit: Meta::MAX_PAIRS
        })
    );
    assert_eq!(peak, 0, "a refused meta allocates nothing");
    // `parse` takes them all.
    assert_eq!(Meta::parse(&over).len(), Meta::MAX_PAIRS + 1);
}

#[test]
fn a_frame_at_the_cap_decodes_within_the_bound() {
    let meta = b"a&".repeat(Meta::MAX_PAIRS);
    let mut src = frame_with_meta(&meta);
    let mut proto = FastProto::default();
    let (p, _, peak) = measure(|| proto.decode(&mut src).unwrap().unwrap());
    assert_eq!(p.meta.len(), Meta::MAX_PAIRS);
    assert!(
        peak <= bound(meta.len(), Meta::MAX_PAIRS) + 1024,
        "{peak} bytes"
    );
}
