//! Load-test bots and the benchmark suite (issue #7). Not built yet.
