//! openraft's storage conformance suite, run against our log store and
//! state machine on real files.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

use crate::log_store::{LogEngine, LogStore};
use crate::state_machine::StateMachine;
use crate::types::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogEngine::open(&dir.path().join("raft-log.db")).expect("open log").group(drsdb_common::GroupId(1));
        let sm = StateMachine::open(&dir.path().join("sm")).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("storage suite");
}
