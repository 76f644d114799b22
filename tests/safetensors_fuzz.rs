//! The safetensors reader treats its input as untrusted: random bytes, mutated and truncated valid files,
//! and headers claiming huge tensors give `Err` (or a consistent `Ok`), never a panic, and never an
//! allocation sized by what the header claims rather than by the bytes present.

#[path = "common/alloc.rs"]
mod alloc;

use alloc::largest_allocation;
use liera::io::read_safetensors_bytes;
use proptest::prelude::*;
use std::path::Path;

fn read(bytes: &[u8]) -> liera::Result<Vec<(String, liera::io::HostTensor)>> {
    read_safetensors_bytes(Path::new("fuzz.safetensors"), bytes)
}

/// A safetensors file from a raw JSON header and data.
fn file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// A small valid file: an F32 (2, 3), an F16 (4) and a BF16 (1, 2) tensor.
fn valid() -> Vec<u8> {
    let f32s: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let halfs = [0u8, 0x3c, 0, 0xc0, 0, 0x7c, 1, 0];
    let bf16s = [0x80u8, 0x3f, 0x00, 0x40];
    let mut data = f32s.clone();
    data.extend_from_slice(&halfs);
    data.extend_from_slice(&bf16s);
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"F16","shape":[4],"data_offsets":[24,32]},"c":{"dtype":"BF16","shape":[1,2],"data_offsets":[32,36]}}"#;
    file(header, &data)
}

/// Every tensor read must hold exactly as many values as its shape says.
fn consistent(r: &liera::Result<Vec<(String, liera::io::HostTensor)>>) -> bool {
    match r {
        Ok(ts) => ts
            .iter()
            .all(|(_, t)| t.shape.iter().product::<usize>() == t.data.len()),
        Err(e) => !e.to_string().is_empty(),
    }
}

#[test]
fn the_valid_file_reads() {
    let ts = read(&valid()).unwrap();
    assert_eq!(ts.len(), 3);
    assert_eq!(ts[0].1.data, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!(ts[1].1.data[..2], [1.0, -2.0]);
    assert_eq!(ts[2].1.data, [1.0, 2.0]);
}

#[test]
fn headers_claiming_huge_tensors_fail_without_allocating_them() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "4 TiB tensor in a tiny file",
            file(
                r#"{"x":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#,
                &[0; 16],
            ),
        ),
        (
            "shape whose product overflows",
            file(
                r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
                &[0; 16],
            ),
        ),
        (
            "offsets beyond the file",
            file(
                r#"{"x":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}"#,
                &[0; 64],
            ),
        ),
        (
            "shape disagreeing with offsets",
            file(
                r#"{"x":{"dtype":"F32","shape":[268435456],"data_offsets":[0,16]}}"#,
                &[0; 16],
            ),
        ),
        ("header length u64::MAX", {
            let mut b = u64::MAX.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("header length 2^40", {
            let mut b = (1u64 << 40).to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("header length 90 MB in a small file", {
            let mut b = 90_000_000u64.to_le_bytes().to_vec();
            b.extend_from_slice(&[b' '; 100]);
            b
        }),
    ];
    for (what, bytes) in cases {
        let (r, largest) = largest_allocation(|| read(&bytes));
        let msg = r.expect_err(what).to_string();
        assert!(msg.contains("fuzz.safetensors"), "{what}: {msg}");
        // Nothing sized by the claim: at most a few KiB for a file of a few hundred bytes.
        assert!(
            largest < 64 << 10,
            "{what}: allocated {largest} bytes for a {}-byte file",
            bytes.len()
        );
        eprintln!("{what}: {msg} (largest allocation {largest} bytes)");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (r, largest) = largest_allocation(|| read(&bytes));
        prop_assert!(consistent(&r));
        prop_assert!(largest < 64 << 10);
    }

    #[test]
    fn random_bytes_after_a_plausible_length_never_panic(
        len in 0u64..600,
        body in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        prop_assert!(consistent(&read(&bytes)));
    }

    #[test]
    fn mutated_valid_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            let n = cut.index(bytes.len());
            bytes.truncate(n);
        }
        let (r, largest) = largest_allocation(|| read(&bytes));
        prop_assert!(consistent(&r));
        prop_assert!(largest < 64 << 10);
    }

    #[test]
    fn mutated_header_text_never_panics(
        at in any::<prop::sample::Index>(),
        insert in "[0-9\\[\\],:{}\"a-zA-Z_ ]{0,12}",
    ) {
        let good = valid();
        let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
        let i = at.index(header.len() + 1);
        let mut edited = header[..i].to_string();
        edited.push_str(&insert);
        edited.push_str(&header[i..]);
        let bytes = file(&edited, &good[8 + header_len..]);
        prop_assert!(consistent(&read(&bytes)));
    }
}
