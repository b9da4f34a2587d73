//! Shared helpers of the integration tests.
pub mod corpus;
pub mod differential;
pub mod httpd;
pub mod netns;
