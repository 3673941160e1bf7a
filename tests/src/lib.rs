//! Shared harness for the end-to-end tests: a real supd per test, and images made in code.
