//! Threat-intelligence feed formats.
