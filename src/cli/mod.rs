//! The modules of the `liera` command: the flags shared by several subcommands and their checks
//! ([`args`]), the subcommands on the embedded or IDX digit and clothing data ([`idx`]), those on image
//! folders and VTAB-1k tasks ([`images`]) and the benchmarks ([`bench`](mod@bench)). `src/main.rs`
//! holds the command line itself and dispatches to them.

pub(crate) mod args;
pub(crate) mod bench;
pub(crate) mod idx;
pub(crate) mod images;
