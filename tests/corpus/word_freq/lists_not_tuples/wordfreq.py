from cleaning import words


def count_words(word_list):
    counts = {}
    for word in word_list:
        counts[word] = counts.get(word, 0) + 1
    return counts


def top_words(text, n):
    counts = count_words(words(text))
    result = []
    for word, c in counts.items():
        result.append([word, c])
    result.sort(key=lambda pair: (-pair[1], pair[0]))
    return result[:n]
