//! Shared helpers of the integration tests.
pub mod bench;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod differential;
pub mod frames;
pub mod httpd;
pub mod literal;
pub mod netns;
pub mod scrape;
pub mod soak;
pub mod traffic;
pub mod wait;
