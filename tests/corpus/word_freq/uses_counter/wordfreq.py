from collections import Counter

from cleaning import words


def count_words(word_list):
    return dict(Counter(word_list))


def top_words(text, n):
    counts = Counter(words(text))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
