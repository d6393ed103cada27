//! Integration tests live in tests/tests; see tests/README.
