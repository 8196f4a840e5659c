//! Integration tests of the ledger on real files: one binary, one module per topic.

mod basics;
mod checkpoint;
mod commit_ids;
mod crash;
mod crash_points;
mod damage;
mod fencing;
mod guarantees;
mod journal_stall;
mod model;
mod model_kill;
mod nats;
mod node_ledger;
mod node_snapshots;
mod placement;
mod recovery;
mod replicated_races;
mod risk;
mod shard_journal;
mod shared_directory;
mod sizes;
mod supervision;
