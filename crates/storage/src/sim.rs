//! A simulated disk for crash tests: live and durable state kept apart, crashes and I/O
//! errors injected at a chosen operation number, and several ways to damage what was not
//! yet synced. (To be filled in: see issue 2.)
