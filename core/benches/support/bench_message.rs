//! `BenchmarkMessage`, the request of the seed's benchmark workload
//! (`shared/protocol/BENCH.md`): a proto2 message of 40 fields, derived by
//! hand with prost so no protoc is needed.
//!
//! Shared by `benches/wire.rs` and `tests/bench_message.rs` through
//! `#[path]`; it lives in a subdirectory so cargo does not take it for a
//! bench target of its own.

/// The string every string field holds when the message is filled: 18
/// characters, 54 bytes of UTF-8.
pub const BENCH_TEXT: &str = "许多往事在眼前一幕一幕，变的那麼模糊";

/// The value every int32/int64 field holds when the message is filled.
pub const BENCH_INT: i32 = 100_000;

/// The encoded size of [`BenchmarkMessage::filled`], as BENCH.md states.
pub const FILLED_LEN: usize = 581;

/// The seed benchmark's message, fields in schema order with the labels and
/// defaults of BENCH.md.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BenchmarkMessage {
    #[prost(string, required, tag = "1")]
    pub field1: String,
    #[prost(string, optional, tag = "9")]
    pub field9: Option<String>,
    #[prost(string, optional, tag = "18")]
    pub field18: Option<String>,
    #[prost(bool, optional, tag = "80", default = "false")]
    pub field80: Option<bool>,
    #[prost(bool, optional, tag = "81", default = "true")]
    pub field81: Option<bool>,
    #[prost(int32, required, tag = "2")]
    pub field2: i32,
    #[prost(int32, required, tag = "3")]
    pub field3: i32,
    #[prost(int32, optional, tag = "280")]
    pub field280: Option<i32>,
    #[prost(int32, optional, tag = "6", default = "0")]
    pub field6: Option<i32>,
    #[prost(int64, optional, tag = "22")]
    pub field22: Option<i64>,
    #[prost(string, optional, tag = "4")]
    pub field4: Option<String>,
    #[prost(fixed64, repeated, packed = "false", tag = "5")]
    pub field5: Vec<u64>,
    #[prost(bool, optional, tag = "59", default = "false")]
    pub field59: Option<bool>,
    #[prost(string, optional, tag = "7")]
    pub field7: Option<String>,
    #[prost(int32, optional, tag = "16")]
    pub field16: Option<i32>,
    #[prost(int32, optional, tag = "130", default = "0")]
    pub field130: Option<i32>,
    #[prost(bool, optional, tag = "12", default = "true")]
    pub field12: Option<bool>,
    #[prost(bool, optional, tag = "17", default = "true")]
    pub field17: Option<bool>,
    #[prost(bool, optional, tag = "13", default = "true")]
    pub field13: Option<bool>,
    #[prost(bool, optional, tag = "14", default = "true")]
    pub field14: Option<bool>,
    #[prost(int32, optional, tag = "104", default = "0")]
    pub field104: Option<i32>,
    #[prost(int32, optional, tag = "100", default = "0")]
    pub field100: Option<i32>,
    #[prost(int32, optional, tag = "101", default = "0")]
    pub field101: Option<i32>,
    #[prost(string, optional, tag = "102")]
    pub field102: Option<String>,
    #[prost(string, optional, tag = "103")]
    pub field103: Option<String>,
    #[prost(int32, optional, tag = "29", default = "0")]
    pub field29: Option<i32>,
    #[prost(bool, optional, tag = "30", default = "false")]
    pub field30: Option<bool>,
    #[prost(int32, optional, tag = "60", default = "-1")]
    pub field60: Option<i32>,
    #[prost(int32, optional, tag = "271", default = "-1")]
    pub field271: Option<i32>,
    #[prost(int32, optional, tag = "272", default = "-1")]
    pub field272: Option<i32>,
    #[prost(int32, optional, tag = "150")]
    pub field150: Option<i32>,
    #[prost(int32, optional, tag = "23", default = "0")]
    pub field23: Option<i32>,
    #[prost(bool, optional, tag = "24", default = "false")]
    pub field24: Option<bool>,
    #[prost(int32, optional, tag = "25", default = "0")]
    pub field25: Option<i32>,
    #[prost(bool, optional, tag = "78")]
    pub field78: Option<bool>,
    #[prost(int32, optional, tag = "67", default = "0")]
    pub field67: Option<i32>,
    #[prost(int32, optional, tag = "68")]
    pub field68: Option<i32>,
    #[prost(int32, optional, tag = "128", default = "0")]
    pub field128: Option<i32>,
    #[prost(string, optional, tag = "129", default = "xxxxxxxxxxxxxxxxxxxxx")]
    pub field129: Option<String>,
    #[prost(int32, optional, tag = "131", default = "0")]
    pub field131: Option<i32>,
}

impl BenchmarkMessage {
    /// The request as the benchmark client fills it: every int32/int64
    /// field [`BENCH_INT`], every bool true, every string [`BENCH_TEXT`],
    /// `field5` empty.
    pub fn filled() -> Self {
        let s = || Some(BENCH_TEXT.to_owned());
        let i = Some(BENCH_INT);
        let t = Some(true);
        BenchmarkMessage {
            field1: BENCH_TEXT.to_owned(),
            field9: s(),
            field18: s(),
            field80: t,
            field81: t,
            field2: BENCH_INT,
            field3: BENCH_INT,
            field280: i,
            field6: i,
            field22: Some(i64::from(BENCH_INT)),
            field4: s(),
            field5: Vec::new(),
            field59: t,
            field7: s(),
            field16: i,
            field130: i,
            field12: t,
            field17: t,
            field13: t,
            field14: t,
            field104: i,
            field100: i,
            field101: i,
            field102: s(),
            field103: s(),
            field29: i,
            field30: t,
            field60: i,
            field271: i,
            field272: i,
            field150: i,
            field23: i,
            field24: t,
            field25: i,
            field78: t,
            field67: i,
            field68: i,
            field128: i,
            field129: s(),
            field131: i,
        }
    }
}
