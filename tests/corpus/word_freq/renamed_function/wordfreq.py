from cleaning import words


def countwords(word_list):
    counts = {}
    for word in word_list:
        counts[word] = counts.get(word, 0) + 1
    return counts


def top_words(text, n):
    counts = countwords(words(text))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
