//! How many heap allocations decoding costs per frame, counted by a global
//! allocator wrapper.
//!
//! The goal (BENCH.md's hot path): in steady state, decoding a frame with
//! no meta and no transfer filter allocates nothing, because the packet's
//! URI and body are slices of the frame, which is itself split off the
//! read buffer. Meta pairs and gzip need their own memory; their cost is
//! pinned here too, so a regression shows as a changed count.
//!
//! The counter is per thread: the test harness's own threads allocate
//! while a test runs (reporting the previous test's result, for one), and a
//! process-wide counter would count that too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use teleport_core::bytes::BytesMut;
use teleport_core::{CodecId, FastProto, Meta, Packet, PacketType, Proto, Seq, XferId, XferPipe};

/// Forwards every call to [`System`] and counts, per thread, the calls that
/// obtain memory (`alloc`, `alloc_zeroed`, `realloc`).
struct Counting;

thread_local! {
    // `const`-initialised and without a destructor: on targets with native
    // thread-local storage (every Linux one) an access is a plain read of a
    // `#[thread_local]` static, which never allocates.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn bump() {
    // `try_with` fails only for a key whose destructor has run; this one has
    // none, but the count is not worth a panic inside the allocator.
    let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// implements `GlobalAlloc` soundly, and returns `System`'s result unchanged,
// so each method meets exactly the contract `System` meets (layout, pointer
// validity, alignment, ownership: memory from this allocator is memory from
// `System`). The only extra work is `bump`, an increment of a thread-local
// `Cell<usize>` that does not allocate (so it cannot re-enter the
// allocator), cannot panic or unwind, and does not touch the memory being
// managed.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: our caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`,
        // with `layout`; the rest of the contract is our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations `f` made on this thread.
fn allocs_during(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

/// Frames in the stream; the first [`WARM`] are decoded before counting.
const FRAMES: usize = 2000;
const WARM: usize = 16;

/// A PULL like the benchmark's: `/bench/say`, a 581-byte protobuf body.
fn packet(i: u64) -> Packet {
    Packet::new(PacketType::PULL, Seq(i), "/bench/say")
        .with_body(CodecId::PROTOBUF, vec![0x5a; 581])
}

/// All frames in one buffer, and the packets they hold.
fn stream(make: impl Fn(u64) -> Packet) -> (BytesMut, Vec<Packet>) {
    let mut proto = FastProto::default();
    let mut wire = BytesMut::new();
    let packets: Vec<Packet> = (0..FRAMES as u64).map(make).collect();
    for p in &packets {
        proto.encode(p, &mut wire).unwrap();
    }
    (wire, packets)
}

/// Decodes the whole stream and returns the allocations counted after the
/// warm-up, per frame. With `keep`, every packet is kept until the end (and
/// checked), so no buffer a packet points into can be reused; without it,
/// each packet is dropped before the next frame is decoded, as a session
/// that hands packets to a handler and moves on would.
fn allocs_per_frame(keep: bool, make: impl Fn(u64) -> Packet) -> f64 {
    let (mut src, packets) = stream(make);
    let mut proto = FastProto::default();
    let mut got = Vec::with_capacity(FRAMES);
    for _ in 0..WARM {
        got.push(proto.decode(&mut src).unwrap().unwrap());
    }
    let n = allocs_during(|| {
        while let Some(p) = proto.decode(&mut src).unwrap() {
            if keep {
                got.push(p);
            } else {
                assert_eq!(p.seq.0 as usize, got.len());
                got.push(Packet::default());
            }
        }
    });
    assert!(src.is_empty());
    assert_eq!(got.len(), FRAMES);
    if keep {
        assert_eq!(got, packets);
    }
    n as f64 / (FRAMES - WARM) as f64
}

#[test]
fn the_counter_counts() {
    let n = allocs_during(|| {
        let v = std::hint::black_box(vec![1u8; 100]);
        drop(v);
    });
    assert_eq!(n, 1);
    let other = std::thread::spawn(|| allocs_during(|| drop(std::hint::black_box(vec![0u8; 9]))));
    assert_eq!(other.join().unwrap(), 1);
}

#[test]
fn no_meta_no_filter_allocates_nothing() {
    // The frame is split off the read buffer (a reference count, once the
    // buffer is shared), and the URI, filter list and body are slices of it.
    for keep in [true, false] {
        let per_frame = allocs_per_frame(keep, packet);
        assert_eq!(
            per_frame, 0.0,
            "keep={keep}: {per_frame} allocations per frame"
        );
    }
}

#[test]
fn meta_costs_one_allocation_whatever_its_pairs() {
    // One buffer for every key and value: the same for two pairs (one with
    // an empty value) as for forty.
    for extra in [0, 38] {
        for keep in [true, false] {
            let per_frame = allocs_per_frame(keep, |i| {
                let mut p = packet(i);
                p.meta = Meta::from_iter([("X-Id", i.to_string()), ("X-Flag", String::new())]);
                for j in 0..extra {
                    p.meta.add(format!("X-{j}"), "v%");
                }
                p
            });
            assert_eq!(
                per_frame,
                1.0,
                "{} pairs, keep={keep}: {per_frame} allocations per frame",
                extra + 2
            );
        }
    }
}

#[test]
fn gzip_allocation_count_is_bounded() {
    let gzip = |i| {
        let mut p = packet(i);
        p.xfer = XferPipe::from_ids(&[XferId::GZIP]);
        p
    };
    // The inflater's state lives on the stack and the payload is inflated
    // straight into the proto's scratch buffer; when packets are dropped
    // that buffer is reclaimed, so a frame allocates nothing (a rare growth
    // remains).
    let dropped = allocs_per_frame(false, gzip);
    assert!(dropped <= 0.05, "{dropped} allocations per frame");
    // When packets are kept the scratch buffer is still referenced by the
    // previous body, so it is replaced each frame (one allocation) and the
    // new one is made shared when the payload is split off it (one more).
    let kept = allocs_per_frame(true, gzip);
    assert!((1.0..=2.01).contains(&kept), "{kept} allocations per frame");
}
