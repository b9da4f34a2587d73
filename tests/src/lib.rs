//! Shared helpers of the integration tests.
pub mod bench;
pub mod corpus;
pub mod differential;
pub mod httpd;
pub mod netns;
pub mod scrape;
pub mod traffic;
pub mod soak;
