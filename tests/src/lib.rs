//! Shared helpers of the integration tests.
pub mod corpus;
pub mod httpd;
pub mod netns;
