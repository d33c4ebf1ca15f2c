//! tracer as a library: the detectors, their typed reports and everything they share.
//! The binary (main.rs) only builds the command line from the registry and dispatches;
//! the integration tests read reports back into the report types exported here.
pub mod bounded;
pub mod bpf;
pub mod cgroups;
pub mod container;
pub mod detectors;
pub mod doctor;
pub mod hooks;
pub mod inodes;
pub mod kbtf;
pub mod opts;
pub mod output;
pub mod procinfo;
pub mod prom;
pub mod report;
pub mod ring;
pub mod run;
pub mod serve;
pub mod sink;
pub mod snapshot;
pub mod tcp;
pub mod tracefs;
pub mod trend;
pub mod triage;
pub mod zombies;
