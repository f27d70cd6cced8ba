//! Tasks: the process tree and what each process and thread carries of
//! its own — seizing and running syscalls in a task ([`freeze`]), the tree
//! and task state ([`tasks`]), credentials ([`creds`]), signals
//! ([`signals`]), timers ([`timers`]), job control ([`jobctl`]), seccomp
//! filters ([`seccomp`]) and cgroup membership ([`cgroups`]).

pub mod cgfreeze;
pub mod cgroup_dirs;
pub mod cgroups;
pub mod creds;
pub mod freeze;
pub mod jobctl;
pub mod seccomp;
pub mod signals;
pub mod tasks;
pub mod timers;
