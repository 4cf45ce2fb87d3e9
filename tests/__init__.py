"""bifamily's tests. The folders mirror the repository: unit/ the bifamily package, plugins/ the built-in
plugins, e2e/ the command line and whole runs, faults/ faults and hostile input, bench/ the benchmarks;
helpers/ holds what several test modules share."""
