"""Test target for Python code run by a C builtin: primes() sums a generator expression and
joins another, so is_prime runs in an eval-loop call made by sum() or str.join() (C), inside the
eval-loop call that runs primes. Prints "ready" after the first round; EOF on stdin exits."""
import os
import sys
import threading


def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def primes(limit):
    count = sum(1 for n in range(limit) if is_prime(n))
    text = " ".join(str(n) for n in range(limit) if is_prime(n))
    return count, len(text)


def watch_stdin():
    while sys.stdin.buffer.read(1):
        pass
    os._exit(0)


def main():
    threading.Thread(target=watch_stdin, daemon=True).start()
    primes(2000)
    print("ready", flush=True)
    while True:
        primes(20000)


main()
