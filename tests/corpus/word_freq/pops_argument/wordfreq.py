from cleaning import words


def count_words(word_list):
    counts = {}
    while len(word_list) > 0:
        w = word_list.pop(0)
        counts[w] = counts.get(w, 0) + 1
    return counts


def top_words(text, n):
    counts = count_words(words(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:n]
