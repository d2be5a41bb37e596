from cleaning import words


def count_words(word_list):
    counts = {}
    for word in word_list:
        counts[word] = counts.get(word, 0) + 1
    return counts


def top_words(text, n):
    counts = count_words(words(text))
    pairs = [(c, w) for w, c in counts.items()]
    pairs.sort(key=lambda p: (-p[0], p[1]))
    return pairs[:n]
