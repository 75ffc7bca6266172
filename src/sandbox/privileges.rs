//! Dropping what start-up needed: user, capabilities, no_new_privs, dumpability, Landlock.
