from rvseg.cli import console_main

console_main()
