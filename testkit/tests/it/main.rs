//! Integration tests of the ledger on real files: one binary, one module per topic.

mod basics;
mod checkpoint;
mod crash;
mod damage;
mod model;
mod recovery;
mod risk;
mod sizes;
mod supervision;
