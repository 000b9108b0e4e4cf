//! Transactions over VM disk images (to be filled in: issue 4).
