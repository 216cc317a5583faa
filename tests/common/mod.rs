//! Shared test harness: `agent` starts real fieldsync processes on temp data dirs.
pub mod agent;
