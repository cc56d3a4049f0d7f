"""Stage transitions: weight surgery between the stages of the progressive STIV recipe."""
