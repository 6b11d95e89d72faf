//! The client core (issue #6): signaling client, call engine and ports for
//! media, system call UI, audio route and push tokens, exported with UniFFI.
//! Not built yet; nothing here pretends to work.
