"""memmodel: a selective state-space model with external memory."""
